"""Issue 24: a team's own data (image folders, CSV and Parquet tables), model, starting weights and recipe, through
training, unlearning and import; every bad input is one line, exit 2, and writes nothing."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from sklearn.datasets import load_digits

from app.cli import main
from app.ml.data.dataset import SplitConfig, make_splits
from app.ml.data.formats import load_dataset
from app.ml.models.factory import ModelConfig, create_model
from app.ml.models.meta import ModelMeta
from app.ml.training.recipe import recipe_note
from tests.models_for_tests import small_cnn_bn

CLASSES = ("zero", "one", "two")
FAST = ["--max-epochs", "3", "--verify-refs", "0", "--no-calibrate", "--quiet"]


def make_image_folder(root: Path, *, per_class: int = 30, test_per_class: int = 12, rgb: bool = False,
                      subjects: bool = True) -> dict[str, int]:
    """Digits 0–2 as 16×16 PNGs under root/{train,test}/<name>/; samples.csv gives shuffled ids and a subject per
    three images. Returns path → sample_id."""
    bunch = load_digits()
    rows: list[tuple[str, np.ndarray]] = []
    for k, name in enumerate(CLASSES):
        imgs = bunch.images[bunch.target == k]
        for split, part in (("train", imgs[:per_class]), ("test", imgs[per_class:per_class + test_per_class])):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i, img in enumerate(part):
                rows.append((f"{split}/{name}/{i:03d}.png", np.kron(img / 16 * 255, np.ones((2, 2)))))
    ids = np.random.default_rng(0).permutation(len(rows))
    mapping = {}
    for (rel, pixels), sid in zip(rows, ids, strict=True):
        img = Image.fromarray(pixels.astype(np.uint8))
        (img.convert("RGB") if rgb else img).save(root / rel)
        mapping[rel] = int(sid)
    if subjects:
        with (root / "samples.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "sample_id", "subject_id"])
            w.writerows([rel, sid, f"subject-{sid // 3}"] for rel, sid in mapping.items())
    return mapping


def make_table(path: Path, n: int = 240, *, kind: str = "csv") -> pd.DataFrame:
    rng = np.random.default_rng(1)
    label = rng.choice(["cat", "dog", "eel"], n)
    centre = {"cat": 0.0, "dog": 2.0, "eel": -2.0}
    frame = pd.DataFrame({"sample_id": np.arange(n) + 5, "height": [centre[v] + rng.normal() for v in label],
                          "weight": rng.normal(size=n) * 10 + 70, "label": label,
                          "subject_id": [f"s{i % 40}" for i in range(n)]})
    frame.to_csv(path, index=False) if kind == "csv" else frame.to_parquet(path, index=False)
    return frame


def run(*args: str | Path) -> int:
    return main([str(a) for a in args])


def test_an_image_folder_with_samples_csv(tmp_path: Path) -> None:
    mapping = make_image_folder(tmp_path / "imgs")
    ds = load_dataset("imagefolder", path=tmp_path / "imgs")
    assert ds.names == tuple(sorted(CLASSES)) and ds.x.shape[1:] == (16, 16, 1)
    for rel, sid in list(mapping.items())[:10]:  # each id is the file samples.csv names for it
        want = np.asarray(Image.open(tmp_path / "imgs" / rel))
        assert np.array_equal(ds.x[np.array([sid])][0, ..., 0], want)
        assert ds.y[sid] == ds.names.index(rel.split("/")[1]) and ds.subjects[sid] == f"subject-{sid // 3}"
    splits = make_splits(ds, SplitConfig(seed=0))
    test_ids = sorted(sid for rel, sid in mapping.items() if rel.startswith("test/"))
    train_ids = sorted(sid for rel, sid in mapping.items() if rel.startswith("train/"))
    assert splits.train.tolist() == train_ids  # every image under train/ is trained on
    held = np.concatenate([splits.test, splits.val, splits.shadow])  # the rest is carved from test/
    assert sorted(held.tolist()) == test_ids and len(splits.val) and len(splits.shadow)
    assert splits.origin["val"]["from"] == {"carved from test": len(splits.val)}
    out = tmp_path / "model"
    assert run("train", "--model", "tests.models_for_tests:small_cnn", "--data", f"imagefolder:{tmp_path / 'imgs'}",
               "--out", out, *FAST) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["class_names"] == sorted(CLASSES) and meta["dataset"] == "imagefolder"
    assert meta["recipe"] == {"source": "given"} and meta["train_config"]["max_epochs"] == 3  # a flag was given
    rows = list(csv.DictReader((out / "samples.csv").open()))
    assert {int(r["sample_id"]): (r["path"], r["subject_id"]) for r in rows} == \
        {sid: (rel, f"subject-{sid // 3}") for rel, sid in mapping.items()}


def test_an_image_folder_without_test_or_samples_csv_gets_a_seeded_split_and_sorted_ids(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "imgs", test_per_class=0, subjects=False)
    for d in (tmp_path / "imgs" / "test").iterdir():
        d.rmdir()
    (tmp_path / "imgs" / "test").rmdir()
    ds = load_dataset("imagefolder", path=tmp_path / "imgs")
    assert ds.sources is not None and list(ds.sources) == sorted(ds.sources) and ds.subjects is None
    a, b = make_splits(ds, SplitConfig(seed=3)), make_splits(ds, SplitConfig(seed=3))
    assert len(a.test) == round(0.2 * len(ds)) and a.test.tolist() == b.test.tolist()


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_a_table_with_string_labels_subjects_and_ids(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"people.{kind}"
    frame = make_table(path, kind=kind)
    ds = load_dataset(kind, path=path)
    assert ds.names == ("cat", "dog", "eel") and ds.feature_names == ("height", "weight")
    assert (ds.y[:5] == -1).all()  # ids start at 5: rows 0..4 are absent
    assert ds.y[5] == ds.names.index(frame.label[0]) and ds.subjects[7] == "s2"
    assert np.allclose(ds.x[5], [frame.height[0], frame.weight[0]])  # raw units, as /predict takes them
    out = tmp_path / "model"
    assert run("train", "--model", "mlp", "--data", f"{kind}:{path}", "--out", out, *FAST) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["class_names"] == ["cat", "dog", "eel"] and meta["feature_names"] == ["height", "weight"]
    splits = json.loads((out / "splits.json").read_text())
    assert not set(range(5)) & {i for ids in splits.values() for i in ids}
    # erasing at the source: the rows' values go, every other id stays where it was
    from app.ml.data import tables

    assert tables.erase(path, kind, np.array([5, 9])) == 2 and tables.erase(path, kind, np.array([5])) == 0
    again = load_dataset(kind, path=path)
    assert again.y[5] == again.y[9] == -1 and again.subjects[5] == "" and again.y[6] == ds.y[6]
    assert np.array_equal(again.x[6], ds.x[6]) and not again.x[5].any()
    raw = path.read_text() if kind == "csv" else pd.read_parquet(path).to_csv()
    assert f"{frame.height[0]}" not in raw and "s0," not in raw.split("\n")[1]


def test_torchvision_resnet18_on_tiny_images(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "imgs", per_class=12, test_per_class=4, rgb=True)
    out = tmp_path / "model"
    assert run("train", "--model", "torchvision:resnet18", "--data", f"imagefolder:{tmp_path / 'imgs'}",
               "--image-size", "12", "--max-epochs", "1", "--verify-refs", "0", "--no-calibrate", "--quiet",
               "--no-cache", "--out", out) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["arch"] == "torchvision:resnet18" and meta["in_shape"] == [3, 12, 12]
    assert meta["data_options"] == {"image_size": 12}


def _frozen(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith(prefixes)}


def test_init_and_freeze_hold_through_training_every_method_and_retrain(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "imgs")
    torch.manual_seed(11)
    init = small_cnn_bn(3, (1, 16, 16)).state_dict()
    torch.save(init, tmp_path / "init.pt")  # a plain state_dict: read with weights_only=True
    (tmp_path / "recipe.toml").write_text('optimizer = "sgd"\nlr = 0.05\nschedule = "cosine"\nmax_epochs = 4\n'
                                          'augment = "flip_crop"\nweight_decay = 1e-4\n')
    out = tmp_path / "model"
    assert run("train", "--model", "tests.models_for_tests:small_cnn_bn", "--data",
               f"imagefolder:{tmp_path / 'imgs'}", "--init", tmp_path / "init.pt", "--freeze", "0.,1.",
               "--recipe", tmp_path / "recipe.toml", "--alpha", "0.05", "--verify-refs", "2", "--quiet",
               "--out", out) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["freeze"] == ["0.", "1."] and meta["init"]["source"] == str(tmp_path / "init.pt")
    assert meta["train_config"]["optimizer"] == "sgd" and meta["train_config"]["augment"] == "flip_crop"
    assert meta["recipe"]["source"] == "given" and len(meta["recipe"]["sha256"]) == 64
    frozen = ("0.", "1.")  # the first conv and its batch norm, running statistics included
    trained = load_file(str(out / "model.safetensors"))
    want = _frozen(init, frozen)
    assert want.keys() == _frozen(trained, frozen).keys() and "1.running_mean" in want
    assert all(torch.equal(trained[k], v) for k, v in want.items())
    assert not torch.equal(trained["5.weight"], init["5.weight"])
    from app.ml.verify.store import load_verifier

    refs = load_verifier(out / "verifier", with_refs=True).ref_states  # fine-tuned from the init too
    assert len(refs) == 2 and all(torch.equal(r[k].cpu(), v) for r in refs for k, v in want.items())
    assert all(not torch.equal(r["5.weight"].cpu(), init["5.weight"]) for r in refs)
    train_ids = json.loads((out / "splits.json").read_text())["train"]
    (tmp_path / "forget.txt").write_text("\n".join(map(str, train_ids[:4])))
    for method in ("iau", "finetune", "fisher", "gradient_ascent", "out_match", "bad_teaching", "retrain"):
        dest = tmp_path / f"un-{method}"
        assert run("unlearn", "--model", out, "--forget-ids", tmp_path / "forget.txt", "--method", method,
                   "--max-accuracy-drop", "1", "--out", dest) == 0, method
        after = load_file(str(dest / "model.safetensors"))
        assert all(torch.equal(after[k], v) for k, v in want.items()), method
        assert not torch.equal(after["5.weight"], trained["5.weight"]), method
        assert (dest / "init.safetensors").is_file()  # the exact path of every descendant starts from it


def test_import_serve_delete_a_subject_and_consolidate(tmp_path: Path, redis_url: str) -> None:
    from app.service.live import LiveService
    from tests.service.test_consolidation import _wait_exact
    from tests.service_harness import db_url_for, wait_until

    mapping = make_image_folder(tmp_path / "imgs")
    ds = load_dataset("imagefolder", path=tmp_path / "imgs")
    torch.manual_seed(3)
    start = small_cnn_bn(3, (1, 16, 16))
    save_file({k: v.contiguous() for k, v in start.state_dict().items()}, str(tmp_path / "init.safetensors"))
    model = small_cnn_bn(3, (1, 16, 16))  # fine-tuned by plain PyTorch: the first block frozen, in eval mode
    model.load_state_dict(start.state_dict())
    for p in list(model[0].parameters()) + list(model[1].parameters()):
        p.requires_grad_(False)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    train = np.flatnonzero(np.asarray(ds.given_split) == "train")
    for _ in range(30):
        model.train()
        model[1].eval()
        loss = torch.nn.functional.cross_entropy(model(ds.features(train)), ds.labels(train))
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    args = ["--weights", tmp_path / "weights.pt", "--model", "tests.models_for_tests:small_cnn_bn", "--data",
            f"imagefolder:{tmp_path / 'imgs'}", "--init", tmp_path / "init.safetensors", "--freeze", "0.,1.",
            "--quiet"]
    bare = tmp_path / "no-recipe"  # without a recipe, meta.json says exact deletions use the default one
    assert run("import", *args, "--verify-refs", "0", "--no-calibrate", "--out", bare) == 0
    assert recipe_note(ModelMeta.read(bare / "meta.json")) is not None
    # the recipe the weights were trained with: full-batch Adam, 3e-3, 30 epochs
    (tmp_path / "recipe.toml").write_text("lr = 3e-3\nbatch_size = 128\nmax_epochs = 30\npatience = 30\n")
    out = tmp_path / "imported"
    assert run("import", *args, "--recipe", tmp_path / "recipe.toml", "--verify-refs", "2", "--out", out) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["imported"]["sha256"] and meta["recipe"]["source"] == "given"
    assert recipe_note(ModelMeta.from_json(meta)) is None
    assert meta["n_train"] == len(train) and meta["test_acc"] > 0.6
    home = tmp_path / "svc"
    svc = LiveService(home, out, db_url=db_url_for("sqlite", home), redis_url=redis_url, UNLEARND_THREADS=1,
                      UNLEARND_BATCH_MAX_WAIT_S=0.2, UNLEARND_POLL_INTERVAL_S=0.3, UNLEARND_SWEEP_INTERVAL_S=1,
                      UNLEARND_MAX_ACCURACY_DROP=0.3)
    try:
        svc.start_api()
        svc.start_worker()
        victims = sorted(sid for sid in mapping.values() if sid // 3 == 4)
        assert set(victims) & set(train.tolist())
        with svc.client() as c:
            rid = c.post("/delete", json={"subject_id": "subject-4"}).json()["id"]
            done = svc.wait_request(rid)
            assert done["state"] == "completed", done
            assert done["forgetting"]["verdict"] in ("forgotten", "partial", "not measurable")
            audit = c.get("/audit", params={"limit": 200}).json()
            assert any(rid in json.dumps(e) for e in audit["items"])
            gone = [rel for rel, sid in mapping.items() if sid in victims]

            def erased_at_source() -> bool:  # the files are emptied first, then samples.csv loses the subject
                listed = csv.DictReader((tmp_path / "imgs" / "samples.csv").open())
                return all((tmp_path / "imgs" / rel).stat().st_size == 0 for rel in gone) and not [
                    r for r in listed if r["subject_id"] == "subject-4"]

            assert wait_until(erased_at_source, timeout=30)  # by the worker's sweep, as in the store
            # a stored sample and its own PNG get the same answer
            keep = int(train[0]) if int(train[0]) not in victims else int(train[1])
            rel = next(r for r, s in mapping.items() if s == keep)
            # the API loads a published version on its next poll: both answers from the deletion's version
            assert wait_until(lambda: c.get("/models/current").json()["serving"] == done["model_version"],
                              timeout=30)
            answer = c.get("/predict", params={"sample_id": keep}).json()
            png = (tmp_path / "imgs" / rel).read_bytes()
            png_answer = c.post("/predict", content=png, headers={"content-type": "image/png"}).json()
            assert answer["model_version"] == png_answer["model_version"] == done["model_version"]
            by_id, by_png = answer["predictions"][0], png_answer["predictions"][0]
            assert by_png["label"] == by_id["label"] and by_png["class_name"] == by_id["class_name"] in CLASSES
            assert np.allclose(by_png["probabilities"], by_id["probabilities"], atol=1e-5)
            svc.stop_workers()
            proc = svc.cli("consolidate")
            assert proc.returncode == 0 and "now exact" in proc.stdout, proc.stdout + proc.stderr
            assert _wait_exact(c, rid)["forgetting"]["exact"]
        version = next(d for d in (home / "models").iterdir()
                       if d.is_dir() and json.loads((d / "meta.json").read_text()).get("consolidation"))
        after = load_file(str(version / "model.safetensors"))
        init = load_file(str(tmp_path / "init.safetensors"))
        assert all(torch.equal(after[k], init[k]) for k in _frozen(init, ("0.", "1.")))  # re-fine-tuned from it
        assert not torch.equal(after["5.weight"], init["5.weight"])
    finally:
        svc.stop()


def _bad_cases(tmp: Path) -> list[tuple[list[str], str]]:
    imgs, table = tmp / "imgs", tmp / "t.csv"
    make_image_folder(imgs, per_class=6, test_per_class=2)
    make_table(table, n=60)
    pd.read_csv(table).drop(columns="label").to_csv(tmp / "nolabel.csv", index=False)
    pd.read_csv(table).assign(label="cat").to_csv(tmp / "oneclass.csv", index=False)
    corrupt = tmp / "corrupt"
    make_image_folder(corrupt, per_class=6, test_per_class=2)
    (corrupt / "train" / "one" / "003.png").write_bytes(b"\x89PNG not really")
    empty = tmp / "empty"
    make_image_folder(empty, per_class=6, test_per_class=2, subjects=False)
    for f in (empty / "train" / "two").iterdir():
        f.unlink()
    torch.save(create_model(ModelConfig("mlp", (2,), 3)).state_dict(), tmp / "other.pt")
    folder = f"imagefolder:{imgs}"
    spec = "tests.models_for_tests:small_cnn"
    return [
        (["--model", "no_such_module:f", "--data", folder], "cannot import 'no_such_module'"),
        (["--model", "tests.models_for_tests:raises", "--data", folder], "raised RuntimeError"),
        (["--model", "tests.models_for_tests:not_a_module", "--data", folder], "not a torch.nn.Module"),
        (["--model", "tests.models_for_tests:wrong_classes", "--data", folder], "does not match the data"),
        (["--model", "lenet5", "--data", f"csv:{table}"], "needs image input"),
        (["--model", "mlp", "--data", f"csv:{tmp / 'nolabel.csv'}"], "no 'label' column"),
        (["--model", "mlp", "--data", f"csv:{tmp / 'oneclass.csv'}"], "1 class"),
        (["--model", spec, "--data", f"imagefolder:{corrupt}"], "not a readable PNG or JPEG"),
        (["--model", spec, "--data", f"imagefolder:{empty}"], "an empty class folder"),
        (["--model", spec, "--data", folder, "--init", str(tmp / "other.pt")], "does not fit the model"),
        (["--model", spec, "--data", folder, "--freeze", "backbone."], "matches no parameter"),
        (["--model", spec, "--data", folder, "--recipe", str(tmp / "nope.toml")], "recipe"),
    ]


def test_every_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for k, (args, says) in enumerate(_bad_cases(tmp_path)):
        out = tmp_path / f"out{k}"
        code = run("train", *args, *FAST, "--out", out)
        err = capsys.readouterr().err.strip()
        assert code == 2 and says in err and len(err.splitlines()) == 1, (args, err)
        assert not out.exists(), args
    # import: weights whose frozen parameters are not the init's
    make_image_folder(tmp_path / "imp", per_class=6, test_per_class=4)
    torch.manual_seed(0)
    save_file(small_cnn_bn(3, (1, 16, 16)).state_dict(), str(tmp_path / "a.safetensors"))
    torch.manual_seed(1)
    save_file(small_cnn_bn(3, (1, 16, 16)).state_dict(), str(tmp_path / "b.safetensors"))
    code = run("import", "--weights", tmp_path / "b.safetensors", "--model", "tests.models_for_tests:small_cnn_bn",
               "--data", f"imagefolder:{tmp_path / 'imp'}", "--init", tmp_path / "a.safetensors", "--freeze", "0.",
               "--quiet", "--out", tmp_path / "imp-out")
    err = capsys.readouterr().err.strip()
    assert code == 2 and "frozen parameters differ from --init" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "imp-out").exists()


def test_a_table_model_answers_rows_by_column_name(tmp_path: Path, redis_url: str) -> None:
    from app.service.live import LiveService
    from tests.service_harness import db_url_for

    frame = make_table(tmp_path / "people.csv")
    out = tmp_path / "model"
    assert run("train", "--model", "mlp", "--data", f"csv:{tmp_path / 'people.csv'}", "--out", out, *FAST) == 0
    home = tmp_path / "svc"
    svc = LiveService(home, out, db_url=db_url_for("sqlite", home), redis_url=redis_url, UNLEARND_THREADS=1)
    try:
        svc.start_api()
        with svc.client() as c:
            sid = int(frame.sample_id[0])
            by_id = c.get("/predict", params={"sample_id": sid}).json()["predictions"][0]
            row = {"weight": float(frame.weight[0]), "height": float(frame.height[0])}  # any order
            named = c.post("/predict", json={"instances": [row]})
            assert named.status_code == 200, named.text
            listed = c.post("/predict", json={"instances": [[row["height"], row["weight"]]]}).json()
            for got in (named.json()["predictions"][0], listed["predictions"][0]):
                assert got["label"] == by_id["label"] and got["class_name"] == by_id["class_name"] in ("cat", "dog",
                                                                                                       "eel")
                assert np.allclose(got["probabilities"], by_id["probabilities"], atol=1e-6)
            bad = c.post("/predict", json={"instances": [{"height": 1.0, "age": 3}]})
            assert bad.status_code == 422 and "missing ['weight']" in bad.json()["detail"] and "age" in \
                bad.json()["detail"]
    finally:
        svc.stop()
