"""`unlearnd`: the one command-line entry point.

Every sub-command turns its flags into explicit arguments of a library call; errors from
the unlearnd exception tree are printed as one line (exit 2), never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from pydantic import ValidationError
from sqlalchemy.exc import DatabaseError

from app.core.config import Settings
from app.errors import UnlearndError

if TYPE_CHECKING:
    from app.ml.models.meta import ModelMeta

RECIPE_FLAGS = ("lr", "batch_size", "max_epochs", "patience", "optimizer", "momentum", "weight_decay", "schedule",
                "augment")


def _model_dir(path: Path) -> None:
    """The check load_model_dir makes first, made before torch is imported."""
    from app.errors import ModelLoadError

    if not (path / "model.safetensors").is_file():
        raise ModelLoadError(f"{path} is not a model directory: model.safetensors is missing")


def _data(ns: argparse.Namespace) -> tuple[str, Path | None]:
    """--data FORMAT:PATH, or --dataset NAME [--data PATH]; and --arch's name, as far as it can be known without
    torch."""
    from app.errors import ConfigError
    from app.ml.models.config import check_arch

    check_arch(ns.arch)

    if ns.data:  # a path that is not there fails before torch is imported
        _, sep, rest = ns.data.partition(":")
        if not any(Path(c).exists() for c in ([rest] if sep else []) + [ns.data]):
            raise ConfigError(f"--data {ns.data}: {rest if sep else ns.data} does not exist")
    from app.ml.data.formats import parse_data

    fmt, path = parse_data(ns.data) if ns.data else (None, None)
    if fmt and ns.dataset and fmt != ns.dataset:
        raise ConfigError(f"--dataset {ns.dataset} and --data {ns.data} name two different formats")
    name = fmt or ns.dataset
    if name is None:
        raise ConfigError("name the data: --data FORMAT:PATH (imagefolder, csv, parquet, npz) or --dataset NAME")
    return name, path


def _start(ns: argparse.Namespace) -> tuple[object, object]:
    """The recipe (TOML file, then flags) and the start (init, freeze) that train and import share."""
    from app.ml.training.recipe import make_recipe
    from app.ml.workflows.pipeline import Start

    cfg, source = make_recipe(ns.recipe, {"alpha": getattr(ns, "alpha", None), "gr_norm": getattr(ns, "gr_norm", None),
                                          "gr_grad": getattr(ns, "gr_grad", None), "seed": ns.seed,
                                          **{k: getattr(ns, k) for k in RECIPE_FLAGS}})
    freeze = tuple(p.strip() for p in (ns.freeze or "").split(",") if p.strip())
    return cfg, Start(init=ns.init, freeze=freeze, recipe=source)


def _extras(ns: argparse.Namespace, settings: Settings) -> dict[str, object]:
    from app.ml.forgetting.calibrate import CalibrationConfig
    from app.ml.verify.base import VerifierConfig

    return {"verifier": ns.verifier if ns.verify_refs else None,
            "verifier_cfg": VerifierConfig(n_refs=ns.verify_refs, seed=ns.seed),
            "calibration": None if ns.no_calibrate else CalibrationConfig(max_accuracy_drop=ns.max_accuracy_drop,
                                                                          seed=ns.seed),
            "chunk_size": settings.chunk_size, "progress": not ns.quiet, "device": ns.device or settings.device,
            "data_dir": settings.data_dir, "data_options": {
                "image_size": ns.image_size, "label_column": ns.label_column, "normalize": ns.normalize,
                "drop_columns": [c.strip() for c in ns.drop_columns.split(",") if c.strip()] if ns.drop_columns
                else None}}


def _report(meta: ModelMeta) -> None:
    if meta.verifier is not None:
        from app.ml.verify.cli import power_line

        print(power_line(meta.verifier))
    if meta.calibration is not None:
        from app.ml.verify.cli import calibration_line

        print(calibration_line(meta.calibration))


def _train(ns: argparse.Namespace, settings: Settings) -> int:
    dataset, path = _data(ns)  # before torch: a bad path or arch fails at once
    if ns.nproc > 1 and (ns.shards > 1 or ns.slices > 1):
        from app.errors import ConfigError

        raise ConfigError("--shards/--slices train in one process: drop --nproc")
    if ns.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _torchrun(ns.nproc, ns.argv)
    from app.ml.data.dataset import SplitConfig
    from app.ml.sharding.plan import ShardSpec
    from app.ml.training.distributed import join
    from app.ml.workflows.pipeline import train_to_dir

    cfg, start = _start(ns)
    meta = train_to_dir(dataset=dataset, arch=ns.arch, out=ns.out, train_cfg=cfg,  # type: ignore[arg-type]
                        split_cfg=SplitConfig(seed=ns.seed), data_path=path, with_cache=not ns.no_cache,
                        start=start, world=join(ns.device or settings.device),
                        shards=ShardSpec(ns.shards, ns.slices, ns.aggregate),
                        **_extras(ns, settings))  # type: ignore[arg-type]
    if meta is None:  # another rank than 0: rank 0 reports and writes
        return 0
    print(f"trained {ns.arch} on {dataset} (α={meta.alpha}, {meta.epochs} epochs, {meta.wall_time_s:.1f} s): "
          f"train {meta.train_acc:.4f} val {meta.val_acc:.4f} test {meta.test_acc:.4f} → {ns.out}")
    _report(meta)
    return 0


def _import(ns: argparse.Namespace, settings: Settings) -> int:
    dataset, path = _data(ns)  # before torch: a bad path fails at once
    if ns.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _torchrun(ns.nproc, ns.argv)
    from app.ml.training.distributed import join
    from app.ml.training.recipe import recipe_note
    from app.ml.workflows.importing import import_to_dir, require_new_dir

    cfg, start = _start(ns)
    require_new_dir(ns.out)  # on every rank, before the rendezvous: rank 0 writes nothing before it
    meta = import_to_dir(weights=ns.weights, arch=ns.arch, dataset=dataset, data_path=path, out=ns.out,
                         train_cfg=cfg, start=start, world=join(ns.device or settings.device),
                         **_extras(ns, settings))  # type: ignore[arg-type]
    if meta is None:  # another rank than 0: rank 0 reports and writes
        return 0
    print(f"imported {ns.weights} as {ns.arch} on {dataset}: {meta.n_train} training samples, train "
          f"{meta.train_acc:.4f} val {meta.val_acc:.4f} test {meta.test_acc:.4f} → {ns.out}")
    _report(meta)
    note = recipe_note(meta)
    if note:
        print(f"note: {note}")
    return 0


def _unlearn(ns: argparse.Namespace, settings: Settings) -> int:
    from app.errors import ConfigError
    from app.ml.data.ids import read_ids

    forget = read_ids(ns.forget_ids)  # bad input fails before torch is imported
    _model_dir(ns.model)
    from app.ml.workflows.pipeline import unlearn_to_dir

    iau_flags = {k: getattr(ns, k) for k in ("eta", "reduction", "step") if getattr(ns, k) is not None}
    if ns.method == "iau":
        params: dict[str, object] = {"correction": not ns.no_correction, **iau_flags}
    elif iau_flags or ns.no_correction:
        raise ConfigError(f"--eta, --reduction, --step and --no-correction are IAU's; --method is {ns.method!r}")
    else:
        params = {}
    meta = unlearn_to_dir(model_dir=ns.model, forget_ids=forget, out=ns.out, method=ns.method,
                          params=params, data_path=ns.data, data_dir=settings.data_dir,
                          use_cache=not ns.no_cache, refresh_cache=ns.refresh_cache,
                          chunk_size=settings.chunk_size, max_accuracy_drop=ns.max_accuracy_drop,
                          on_partial=ns.on_partial, device=ns.device or settings.device)
    u = meta.unlearn or {}
    tries = f", {len(u['attempts'])} tries" if len(u["attempts"]) > 1 else ""
    path = u["attempts"][-1].get("path")
    tries += f", {path} path" if path else ""
    print(f"forgot {u['n_forget']} samples with {u['method']} ({u['chosen_by']}{tries}) in {u['time_s']:.3f} s: "
          f"forget acc {u['forget_acc_before']:.4f} → {u['forget_acc_after']:.4f}, test acc "
          f"{u['test_acc_before']:.4f} → {u['test_acc_after']:.4f} → {ns.out}")
    if u["verification"].get("verdict") != "unverified":
        from app.ml.verify.cli import forgetting_line

        print(forgetting_line(u["verification"]))
    return 0


def _verify(ns: argparse.Namespace, settings: Settings) -> int:
    from app.ml.verify.cli import verify_command

    verify_command(model=ns.model, ids_file=ns.ids, against=ns.against, data=ns.data, data_dir=settings.data_dir,
                   as_json=ns.json, device=ns.device or settings.device)
    return 0


def _cache(ns: argparse.Namespace, settings: Settings) -> int:
    from app.ml.common.device import resolve
    from app.ml.forgetting.gradcache import build_cache, save_cache
    from app.ml.models.checkpoint import dataset_for, load_model_dir

    md = load_model_dir(ns.model, device=resolve(ns.device or settings.device))
    if md.meta.shards:
        from app.errors import ConfigError

        raise ConfigError(f"{ns.model} is a sharded model: it forgets by retraining shards, no gradient cache is used")
    ds = dataset_for(md, data_path=ns.data, data_dir=settings.data_dir)
    path = save_cache(build_cache(md.model, ds, md.splits.train, chunk_size=settings.chunk_size), ns.model)
    print(f"gradient cache over {len(md.splits.train)} samples → {path}")
    return 0


def _bench(ns: argparse.Namespace, settings: Settings) -> int:
    import app.service_bench  # noqa: F401  (registers the service suites)
    import worker.compliance  # registers the compliance suites: the worker's code on a simulated clock
    import worker.scaling  # noqa: F401  (registers the scaling suites: the worker's exact retrain at N processes)
    from app.ml.bench import SUITES, run_suite

    if ns.list or not ns.suite:
        for name in SUITES.names():
            print(f"{name:20s} {SUITES.get(name).summary}")
        return 0
    out = ns.out or Path("bench-out") / ns.suite
    results = run_suite(ns.suite, out=out, seeds=ns.seeds, data_dir=settings.data_dir, data_path=ns.data,
                        device=ns.device or settings.device)
    print((out / "results.md").read_text())
    print(f"wrote {out}/results.json, results.md and plots ({len(results.get('rows', []))} rows)")
    return 0


def _demo(ns: argparse.Namespace, settings: Settings) -> int:
    """Train a GR model on digits, forget 5% of its training set, print both models."""
    import numpy as np

    from app.ml.data.dataset import Splits

    home = settings.home / "demo"
    # the forgetting setting is not chosen here: training calibrates it for the model it made
    train_ns = argparse.Namespace(dataset="digits", arch="lenet5", alpha=0.1, gr_norm="global", gr_grad="exact",
                                  seed=ns.seed, data=None, out=home / "model", quiet=False, no_cache=False,
                                  verifier="lira", verify_refs=4, max_accuracy_drop=0.01, no_calibrate=False,
                                  device=ns.device, recipe=None, init=None, freeze=None, image_size=None,
                                  **dict.fromkeys(RECIPE_FLAGS))
    _train(train_ns, settings)
    train_ids = Splits.load(home / "model" / "splits.json").train
    rng = np.random.default_rng(ns.seed)
    forget = rng.choice(train_ids, size=max(1, len(train_ids) // 20), replace=False)
    ids_file = home / "forget.txt"
    ids_file.write_text("\n".join(str(int(i)) for i in sorted(forget)) + "\n")
    unlearn_ns = argparse.Namespace(model=home / "model", forget_ids=ids_file, out=home / "unlearned", method=None,
                                    eta=None, reduction=None, step=None, no_correction=False, data=None,
                                    no_cache=False, refresh_cache=True, max_accuracy_drop=None,
                                    on_partial="accept", device=ns.device)
    return _unlearn(unlearn_ns, settings)


DEVICE_HELP = "auto, cpu, cuda or cuda:N (default: UNLEARND_DEVICE, auto: the first GPU if any)"


class OneLineParser(argparse.ArgumentParser):
    """Bad flags as every other bad input: one line on stderr, exit code 2 (argparse prints its usage too)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"unlearnd: error: {self.prog.removeprefix('unlearnd ')}: {message} (see --help)\n")


def non_negative(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    return _bounded(kind, lambda v: v >= 0, "≥ 0")


def positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    return _bounded(kind, lambda v: v > 0, "> 0")


def _bounded(kind: type[int] | type[float], ok: Callable[[float], bool], what: str) -> Callable[[str], int | float]:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") \
                from None
        if not ok(value) or value != value:  # NaN
            raise argparse.ArgumentTypeError(f"{text!r} must be {what}")
        return value

    parse.__name__ = kind.__name__
    return parse


def data_path(text: str) -> Path:
    """--data of a command whose model already names its format: `FORMAT:PATH` or `PATH`."""
    from app.ml.data.formats import parse_data

    return parse_data(text)[1]


def _model_flags(p: argparse.ArgumentParser, datasets: list[str], models: list[str]) -> None:
    """The flags train and import share: model, data, start, recipe, verifier, output."""
    p.add_argument("--model", "--arch", dest="arch", required=True, metavar="SPEC",
                   help=f"a registered arch ({', '.join(models)}), torchvision:NAME (any torchvision classifier, "
                        "untrained), or MODULE:CALLABLE of your own, called with num_classes and input_shape; "
                        "recorded in meta.json and imported again on load")
    p.add_argument("--data", metavar="FORMAT:PATH",
                   help="imagefolder:DIR, csv:FILE, parquet:FILE or npz:FILE; or the file of --dataset NAME")
    p.add_argument("--dataset", help=f"a dataset by name: {', '.join(datasets)}")
    p.add_argument("--image-size", type=positive(int), metavar="N", help="imagefolder: resize every image to N×N")
    p.add_argument("--normalize", metavar="data|none|M,…/S,…",
                   help="images: standardise each channel with the data's own statistics (data, the default), not "
                        "at all (none: pixels in [0, 1]), or your own means/stds, e.g. a backbone's "
                        "0.485,0.456,0.406/0.229,0.224,0.225")
    p.add_argument("--label-column", metavar="NAME", help="csv/parquet: the label column (default: label)")
    p.add_argument("--drop-columns", metavar="NAME[,NAME…]", help="csv/parquet: columns that are not features")
    p.add_argument("--init", type=Path, metavar="FILE",
                   help="starting weights (safetensors, or a state_dict read with weights_only=True); every "
                        "retrain starts from them too")
    p.add_argument("--freeze", metavar="PREFIX[,PREFIX…]", help="parameter-name prefixes that are never trained")
    p.add_argument("--recipe", type=Path, metavar="FILE.toml",
                   help="the training recipe (optimizer, lr, schedule, epochs, …); flags below override it")
    p.add_argument("--seed", type=non_negative(int), default=0,
                   help="seeds the splits, the initialisation and the batches (default 0)")
    p.add_argument("--optimizer", choices=("adam", "sgd", "signsgd"), help="default adam")
    p.add_argument("--lr", type=positive(float), help="learning rate (default 1e-3)")
    p.add_argument("--momentum", type=non_negative(float), help="sgd's momentum (default 0.9)")
    p.add_argument("--weight-decay", type=non_negative(float), help="default 0")
    p.add_argument("--schedule", choices=("constant", "cosine"), help="learning-rate schedule (default constant)")
    p.add_argument("--augment", choices=("none", "flip_crop"), help="image augmentation (default none)")
    p.add_argument("--batch-size", type=positive(int), help="default 64")
    p.add_argument("--max-epochs", type=positive(int),
                   help="at most this many epochs; early stopping on validation accuracy ends sooner (default 100)")
    p.add_argument("--patience", type=positive(int), help="epochs without improvement (default 10)")
    p.add_argument("--verifier", default="lira", help="membership verifier built with the model (lira, loss)")
    p.add_argument("--verify-refs", type=non_negative(int), default=4, metavar="K",
                   help="reference models of the verifier (LiRA needs ≥ 2; 0: no verifier)")
    p.add_argument("--max-accuracy-drop", type=non_negative(float), default=0.01, metavar="D",
                   help="held-out accuracy a deletion may cost (0.01 = 1 point): calibration's budget")
    p.add_argument("--no-calibrate", action="store_true",
                   help="skip choosing the forgetting setting by simulated deletions (unlearn then uses IAU)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--out", type=Path, required=True, help="the model directory to write")
    p.add_argument("--device", help=DEVICE_HELP)


def _registered(argv: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """The dataset and arch names train's and import's --help lists. Reading them imports torch (seconds), so
    only those two helps do: every other command, and a bad input's error, start at once."""
    args = list(sys.argv[1:] if argv is None else argv)
    words = [a for a in args if not a.startswith("-")]
    if not words or words[0] not in ("train", "import") or not {"-h", "--help"} & set(args):
        return ["(see `unlearnd train --help`)"], ["(see `unlearnd train --help`)"]
    from app.ml.data.formats import DATASETS
    from app.ml.models.factory import MODELS

    return DATASETS.names(), MODELS.names()


def _nproc_flag(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--nproc", type=positive(int), default=1, metavar="N",
                   help=f"{what} in N processes on this host (torch.distributed launched by torchrun: gloo on the "
                        "CPU, nccl on CUDA); under torchrun itself, its world is used")


def _parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    p = OneLineParser(prog="unlearnd", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    datasets, models = _registered(argv)

    t = sub.add_parser("train", help="train a model with the GR loss")
    _model_flags(t, datasets, models)
    t.add_argument("--alpha", type=non_negative(float), help="GR strength (0: plain training)")
    t.add_argument("--gr-norm", choices=("global", "per_tensor"))
    t.add_argument("--gr-grad", choices=("exact", "fd"),
                   help="penalty gradient: exact double backprop, or a finite-difference HVP")
    t.add_argument("--no-cache", action="store_true", help="skip writing the fast path's gradient cache")
    t.add_argument("--shards", type=positive(int), default=1, metavar="K",
                   help="SISA: K constituent models on disjoint shards (by subject where the data names them); a "
                        "deletion retrains only the shards that held its samples, and is exact at once (default 1)")
    t.add_argument("--slices", type=positive(int), default=1, metavar="R",
                   help="each shard trains in R slices with a checkpoint after each; a retrain resumes from the "
                        "last one before the deleted samples' slice (default 1)")
    t.add_argument("--aggregate", choices=("mean", "vote"), default="mean",
                   help="how the constituents answer together: their mean softmax, or a majority vote")
    _nproc_flag(t, "train")
    t.set_defaults(func=_train)

    im = sub.add_parser("import", help="make a model directory for weights trained elsewhere, ready to serve")
    im.add_argument("--weights", type=Path, required=True,
                    help="the trained weights: safetensors, or a torch state_dict (read with weights_only=True)")
    _model_flags(im, datasets, models)
    _nproc_flag(im, "train the verifier's reference models (the recipe's runs)")
    im.set_defaults(func=_import)

    u = sub.add_parser("unlearn", help="forget training samples (the model's calibrated setting by default)")
    u.add_argument("--model", type=Path, required=True, help="the model directory to forget from")
    u.add_argument("--method", help="iau, out_match, finetune, retrain, … (unknown names list them); "
                                    "default: the setting calibrated at training")
    u.add_argument("--max-accuracy-drop", type=float, metavar="D",
                   help="held-out accuracy the result may lose (default: the calibration's budget, else 0.01)")
    u.add_argument("--on-partial", choices=("accept", "retrain"), default="accept",
                   help="when the verifier still detects D_f: keep the fast result, or retrain exactly")
    u.add_argument("--forget-ids", type=Path, required=True, help="file with one sample id per line")
    u.add_argument("--eta", type=float)
    u.add_argument("--reduction", choices=("sum", "mean"))
    u.add_argument("--step", choices=("sgd", "adam"))
    u.add_argument("--no-correction", action="store_true", help="IA only: no descent on the retained data")
    u.add_argument("--no-cache", action="store_true", help="ignore the gradient cache (slow path)")
    u.add_argument("--refresh-cache", action="store_true", help="write a gradient cache for the new model")
    u.add_argument("--data", type=data_path, metavar="[FORMAT:]PATH",
                   help="where the model's data is now (default: the path in its meta.json)")
    u.add_argument("--out", type=Path, required=True, help="the model directory to write the new model to")
    u.add_argument("--device", help=DEVICE_HELP)
    u.set_defaults(func=_unlearn)

    v = sub.add_parser("verify", help="test whether a model still shows membership of training samples")
    v.add_argument("--model", type=Path, required=True, help="a model directory with a verifier")
    v.add_argument("--ids", type=Path, required=True, help="file with one training sample id per line")
    v.add_argument("--against", type=Path, help="a model retrained without the ids: adds UE_lira")
    v.add_argument("--data", type=data_path, metavar="[FORMAT:]PATH",
                   help="where the model's data is now (default: the path in its meta.json)")
    v.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    v.add_argument("--device", help=DEVICE_HELP)
    v.set_defaults(func=_verify)

    c = sub.add_parser("cache", help="(re)build a model's gradient cache for the fast path")
    c.add_argument("--model", type=Path, required=True, help="the model directory")
    c.add_argument("--data", type=data_path, metavar="[FORMAT:]PATH",
                   help="where the model's data is now (default: the path in its meta.json)")
    c.add_argument("--device", help=DEVICE_HELP)
    c.set_defaults(func=_cache)

    b = sub.add_parser("bench", help="run a benchmark suite")
    b.add_argument("--suite")
    b.add_argument("--list", action="store_true")
    b.add_argument("--seeds", type=int, default=None)
    b.add_argument("--data", type=Path)
    b.add_argument("--out", type=Path)
    b.add_argument("--device", help=DEVICE_HELP)
    b.set_defaults(func=_bench)

    from app.service_cli import add_parsers

    add_parsers(sub)

    d = sub.add_parser("demo", help="train on digits, forget 5%%, print the result")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", help=DEVICE_HELP)
    d.set_defaults(func=_demo)
    return p


def _torchrun(nproc: int, argv: list[str]) -> int:
    """This same command in NPROC processes on this host, started by torchrun (a standalone rendezvous)."""
    rest, skip = [], False
    for a in argv:
        if skip or a == "--nproc" or a.startswith("--nproc="):
            skip = a == "--nproc"
            continue
        rest.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "app.cli", *rest]
    rc = subprocess.run(cmd, check=False).returncode
    if rc:
        print(f"unlearnd: error: the {nproc}-process run failed (torchrun exit {rc}); each rank's error is above",
              file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ns = _parser(argv).parse_args(argv)
    ns.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        settings = Settings()
    except ValidationError as e:
        print(f"unlearnd: error: {settings_error(e)}", file=sys.stderr)
        return 2
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    func: Callable[[argparse.Namespace, Settings], int] = ns.func
    try:
        return func(ns, settings)
    except UnlearndError as e:
        print(f"unlearnd: error: {e}", file=sys.stderr)
        return 2
    except (json.JSONDecodeError, FileNotFoundError) as e:
        print(f"unlearnd: error: {e}", file=sys.stderr)
        return 2
    except DatabaseError as e:  # a corrupt or foreign ledger file, a database that refuses us
        print(f"unlearnd: error: {ledger_error(settings, e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nunlearnd: interrupted", file=sys.stderr)
        return 130


def ledger_error(settings: Settings, e: DatabaseError) -> str:
    where = settings.db_url.split("@")[-1]
    why = str(getattr(e, "orig", None) or e).splitlines()[0]
    if "no such table" in why or ("relation" in why and "does not exist" in why):
        return f"the ledger at {where} has no tables yet: run `unlearnd db upgrade` (or start `unlearnd serve`) first"
    return (f"the ledger at {where} cannot be used ({why}): restore it and the home from the same backup "
            "(docs/operations.md), then check it with `unlearnd audit verify --expect-head SEQ:HASH`")


def settings_error(e: ValidationError) -> str:
    """One line naming the environment variable: `UNLEARND_DEVICE: must be auto, cpu, … got 'gpu'`."""
    parts = []
    for err in e.errors():
        name = "UNLEARND_" + "_".join(str(x) for x in err["loc"]).upper()
        parts.append(f"{name}: {str(err['msg']).removeprefix('Value error, ')}")
    return "; ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
