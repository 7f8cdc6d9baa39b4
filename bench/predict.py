"""Serving benchmark: a bundle of a finished ensemble whose folds store only what they trained,
against the same bundle with every neural fold storing its whole network, side by side.

A fold of a top-N fine-tuned e5 member keeps e5's top layers and the head in its model.pt and
reads the frozen rest from the pruned e5 folder it recorded (one copy in the bundle's refs/);
"whole" re-saves each neural fold's full state dict, as if every fold carried its own e5.
Both bundles are exported from the same manifest and must predict the same probabilities.

Printed per bundle: size on disk (MiB, and the e5 member's share), rows/s of
`comp.load(bundle).predict_proba` on the competition's test texts (best of --repeat, each
round loading the bundle anew, then timing the prediction of every text; the load time is
printed beside it), and the largest difference between
the two bundles' probabilities.

  .venv/bin/python bench/predict.py                        # newest submission with an e5 member
  .venv/bin/python bench/predict.py --manifest submissions/stack_cv0.8711.json

Ends with one line: slim_mib=… whole_mib=… size_ratio=… slim_rows_s=… whole_rows_s=… max_diff=…
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comp.core.utils import CompError, read_json  # noqa: E402
from comp.data.recipes import load_recipe  # noqa: E402


def _has_e5(manifest: Path) -> bool:
    try:
        man = read_json(manifest)
    except (OSError, ValueError):
        return False
    return any("e5" in Path(m).name for m in man.get("members", []))


def pick_manifest() -> Path:
    """The newest submission manifest with an e5 member and a fitted blender."""
    found = sorted((p for p in Path("submissions").rglob("*.json")
                    if "stale" not in p.parts and _has_e5(p)
                    and read_json(p).get("blender")),
                   key=lambda p: p.stat().st_mtime)
    if not found:
        raise CompError("no submission with an e5 member under submissions/; run ./run.sh "
                        "first (the default run trains fusion_e5_fast)")
    return found[-1]


def size_mib(d: Path) -> float:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file()) / 2**20


def whole_folds(bundle: Path) -> int:
    """Re-save every neural fold of a bundle with its full state dict; returns the count."""
    import torch

    from comp.nn.serving import load_neural_fold
    from comp.serving.predictor import bundled_recipe

    n = 0
    for ckpt in sorted(bundle.glob("members/*/fold*/model.pt")):
        member = ckpt.parent.parent
        recipe = bundled_recipe(load_recipe(member / "recipe.toml"), bundle)
        classes = read_json(member / "classes.json")
        model = load_neural_fold(ckpt, recipe, len(classes))
        torch.save(model.state_dict(), ckpt)
        n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--manifest", type=Path, help="a submission .json (default: newest with e5)")
    ap.add_argument("--work", type=Path, default=Path("bench_work/predict"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    import comp
    from comp.serving.bundle import export_bundle

    torch.set_num_threads(args.threads)
    manifest = args.manifest or pick_manifest()
    man = read_json(manifest)
    first = load_recipe(Path(man["members"][0]) / "recipe.toml")
    from comp.data.competition import load_competition

    texts = list(load_competition(first.data).test_texts)
    print(f"manifest {manifest}: {len(man['members'])} members, {len(texts)} test texts")

    shutil.rmtree(args.work, ignore_errors=True)
    slim, whole = args.work / "slim", args.work / "whole"
    sizes = export_bundle(manifest, slim)
    shutil.copytree(slim, whole)
    n = whole_folds(whole)
    print(f"{n} neural fold(s) re-saved whole")

    results = {}
    for name, bundle in (("slim", slim), ("whole", whole)):
        best, load_s, proba = float("inf"), float("inf"), None
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            model = comp.load(bundle)
            t1 = time.perf_counter()
            proba = model.predict_proba(texts)
            best = min(best, time.perf_counter() - t1)
            load_s = min(load_s, t1 - t0)
        print(f"{name}: loaded in {load_s:.1f}s")
        e5 = sum(size_mib(d) for d in (bundle / "members").iterdir() if "e5" in d.name)
        e5 += sum(size_mib(d) for d in (bundle / "refs").glob("e5-small*"))
        results[name] = (size_mib(bundle), e5, len(texts) / best, proba)
    diff = float(np.abs(results["slim"][3] - results["whole"][3]).max())

    print(f"\n{'bundle':<8}{'MiB':>10}{'e5 MiB':>10}{'rows/s':>10}")
    for name, (mib, e5, rps, _) in results.items():
        print(f"{name:<8}{mib:>10.1f}{e5:>10.1f}{rps:>10.1f}")
    print("members (slim, MiB): " + ", ".join(f"{k} {v / 2**20:.1f}" for k, v in sizes.items()))
    s, w = results["slim"], results["whole"]
    print(f"slim_mib={s[0]:.1f} whole_mib={w[0]:.1f} size_ratio={w[0] / s[0]:.2f} "
          f"slim_rows_s={s[2]:.1f} whole_rows_s={w[2]:.1f} max_diff={diff:.2e}")


if __name__ == "__main__":
    main()
