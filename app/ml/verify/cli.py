"""`unlearnd verify` and the one-line summaries that `train` and `unlearn` print."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from app.errors import DataError
from app.ml.models.checkpoint import load_model_dir
from app.ml.verify.base import FPRS, verdict
from app.ml.verify.report import power_summary, ue_lira
from app.ml.verify.store import FOLDER, load_verifier


def _rate(r: dict[str, Any]) -> str:
    return f"{100 * r['rate']:.1f}% [{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}]"


def power_line(summary: dict[str, Any]) -> str:
    tprs = ", ".join(f"TPR@{100 * q:g}%FPR {_rate(summary[f'tpr@{q:g}'])}" for q in FPRS)
    lo, hi = summary["auc_ci"]
    return (f"membership verifier {summary['verifier']} (K={summary['K']}): AUC {summary['auc']:.3f} "
            f"[{lo:.3f}, {hi:.3f}], {tprs}; {summary['measurable']}")


def _set_line(label: str, a: dict[str, Any]) -> str:
    t = a["set"]
    flags = ", ".join(f"flagged@{100 * q:g}% {_rate(a[f'flagged@{q:g}'])}" for q in FPRS)
    return (f"{label}: set AUC {t['auc']:.3f} [{t['ci_low']:.3f}, {t['ci_high']:.3f}] p={t['p_member']:.2g}; "
            f"{flags}; KS {a['ks']:.3f}")


def forgetting_line(v: dict[str, Any]) -> str:
    parts = [_set_line("D_f before", v["before"])] if "before" in v else []
    parts.append(_set_line("after", v["after"]))
    over = " (pushed past non-member level)" if v["over_forgotten"] else ""
    need = v["min_detectable_batch"]
    size = f"minimum detectable batch {need}" if need is not None else "no batch size is detectable on this model"
    return "; ".join(parts) + f" → {v['verdict']}{over} ({size})"


def calibration_line(cal: dict[str, Any]) -> str:
    """What calibration chose for batches the verifier can judge and for smaller ones, and why."""
    if "candidates" not in cal:
        return f"forgetting setting: not calibrated ({cal.get('why')})"

    def one(setting: dict[str, Any] | None, regime: str) -> str:
        if setting is None:
            return "exact retrain"
        x = next(c[regime] for c in cal["candidates"] if c["setting"] == setting)
        return (f"{setting['method']} {setting['params']} (score {x['score']}, worst accuracy cost "
                f"{100 * x['max_acc_drop']:.2f} points, {x['time_s']:.2f} s)")

    need = cal.get("min_detectable_batch")
    large = f"batches of {need}+ ids: {one(cal['choice'], 'large')}; " if cal.get("large_sizes") else ""
    why = f"; {cal['why']}" if cal.get("why") else ""
    esc = cal.get("escalation")
    then = f"; a partial batch's flagged samples get {esc['method']} {esc['params']} once" if esc else ""
    return (f"forgetting setting: {large}smaller batches: {one(cal['choice_small'], 'small')}, stable over "
            f"{cal['config']['chain']} chained deletions{then}; calibrated in {cal['seconds']:.0f} s{why}")


def verify_command(*, model: Path, ids_file: Path, against: Path | None, data: Path | None,
                   data_dir: Path | None, as_json: bool, device: str = "cpu") -> dict[str, Any]:
    from app.errors import ForgetSetError
    from app.ml.common.device import describe, resolve
    from app.ml.data.ids import read_ids, rows_of
    from app.ml.models.checkpoint import dataset_for

    dev = resolve(device)
    md = load_model_dir(model, device=dev)
    v = load_verifier(model / FOLDER)
    ds = dataset_for(md, data_path=data, data_dir=data_dir)
    rows, unknown = rows_of(ds.keys, read_ids(ids_file), n_rows=len(ds))
    if unknown:
        raise ForgetSetError(f"{ids_file}: {len(unknown)} id(s) are not training samples of this model (no sample "
                             f"of the data has them): {', '.join(unknown[:10])}", bad_ids=unknown)
    ids = v.check_ids(rows)
    assessed, p_model = v.assess_with_pvalues(md.model, ds, ids)
    result: dict[str, Any] = {"model": str(model), "power": power_summary(v), "assessed": assessed,
                              "device": describe(dev)}
    result.update(verdict(assessed, v.power))
    pvals = {"model": p_model}
    if against is not None:
        other = load_model_dir(against, device=dev)
        if other.meta.dataset != md.meta.dataset or not np.array_equal(other.splits.test,
                                                                                     md.splits.test):
            raise DataError(f"{against} was not trained on {model}'s dataset and splits")
        other_assessed, pvals["against"] = v.assess_with_pvalues(other.model, ds, ids)
        result["against"] = {"model": str(against), "assessed": other_assessed}
        result["ue_lira"] = ue_lira(assessed, other_assessed)
    result["pvalues"] = {k: {int(i): float(p) for i, p in zip(ids, ps, strict=True)} for k, ps in pvals.items()}
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        _print_text(result, ids, pvals)
    return result


def _print_text(result: dict[str, Any], ids: np.ndarray, pvals: dict[str, np.ndarray]) -> None:
    print(power_line(result["power"]))
    print(_set_line(f"{len(ids)} ids on {result['model']}", result["assessed"])
          + f" → {result['verdict']}" + (" (pushed past non-member level)" if result["over_forgotten"] else ""))
    if "against" in result:
        print(_set_line(f"on {result['against']['model']}", result["against"]["assessed"]))
        print(f"UE_lira = {result['ue_lira']:.2f} points (flagged@{100 * FPRS[-1]:g}%FPR, model vs against)")
    print("id\tp_value" + ("\tp_value_against" if "against" in pvals else ""))
    for k, i in enumerate(ids):
        row = [str(int(i)), f"{pvals['model'][k]:.4g}"] + ([f"{pvals['against'][k]:.4g}"] if "against" in pvals else [])
        print("\t".join(row))
