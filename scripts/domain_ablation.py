"""Why the domain-transfer chapter's fast setting collapses to one face: a measured ablation.

Trains the chapter's CRN on its synthetic domains (no hair -> hair, 64 pixels) once per
configuration, changing one thing at a time from the chapter's fast setting: the number of steps,
the weight and layer of the source term, raw RGB patches instead of (or beside) VGG features for
the source term, the network's width, and no source term at all. Each run is measured on the
chapter's 8 unseen test faces as the chapter measures it: how far the hair moved (percent) and
where each head sits (the distance of each output's head centre to its own face's and to the
other faces').

    CXLIB_ALLOW_RANDOM_WEIGHTS=1 python scripts/domain_ablation.py   # about 20 minutes, 2 CPU cores
    python scripts/domain_ablation.py --only paper    # one run (the others are kept)

The VGG19 weights are the ImageNet ones if they are in the torch cache, else (with
``CXLIB_ALLOW_RANDOM_WEIGHTS=1``) seeded random ones, as in CI; the record says which. Writes ``data/domain_transfer_ablation.json``, which chapter 8 reads.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

import cxlib
from cxlib.vgg import imagenet_weights_status
from cxlib.book import attribute_transferred, layout_kept, synthetic_faces
from cxlib.training import DomainTransferObjective, StackedImages, StepBatches, train

ROOT = Path(__file__).resolve().parent.parent
SIZE, COUNT, BATCH, LR, STEPS = 64, 64, 4, 2e-3, 200

#: name -> (what changes, objective arguments, network widths, steps)
RUNS = {
    "paper": ("the chapter's fast setting: source term on conv4_2", {}, (32, 16), STEPS),
    "steps x2": ("twice the steps", {}, (32, 16), 2 * STEPS),
    "steps x4": ("four times the steps", {}, (32, 16), 4 * STEPS),
    "steps x8": ("eight times the steps", {}, (32, 16), 8 * STEPS),
    "source weight 4": ("source term weighted 4", {"source_layers": {"conv4_2": 4.0}}, (32, 16), STEPS),
    "source on conv2_2": ("source term on conv2_2 (32x32 positions) instead of conv4_2 (8x8)",
                          {"source_layers": {"conv2_2": 1.0}}, (32, 16), STEPS),
    "source on patches": ("source term on 5x5 RGB patches instead of conv4_2",
                          {"source_layers": {}, "source_patches": 1.0}, (32, 16), STEPS),
    "patches + conv4_2": ("a patch source term beside the conv4_2 one",
                          {"source_patches": 1.0}, (32, 16), STEPS),
    "wider network": ("twice the width (64/32 channels)", {}, (64, 32), STEPS),
    "no source term": ("the target term alone", {"source_layers": {}}, (32, 16), STEPS),
}


def run_one(name: str, weights: str, run_dir: Path) -> dict:
    what, arguments, (wide, narrow), steps = RUNS[name]
    plain, _ = synthetic_faces(COUNT, SIZE, seed=1)
    with_hair, _ = synthetic_faces(COUNT, SIZE, hair=True, seed=2)
    test_plain, _ = synthetic_faces(8, SIZE, seed=9)
    test_truth, _ = synthetic_faces(8, SIZE, hair=True, seed=9)
    objective = DomainTransferObjective(weights=weights, **arguments)
    torch.manual_seed(0)
    model = cxlib.CRN(cxlib.crn_config(SIZE, wide=wide, narrow=narrow, narrow_from=32))
    sources = StepBatches(StackedImages(plain), BATCH, seed=0)
    others = StepBatches(StackedImages(with_hair), BATCH, seed=1)
    result = train(model, objective, lambda s: {"source": sources(s), "target": others(s)},
                   steps=steps, run_dir=run_dir, lr=LR, device="cpu", progress=False,
                   checkpoint_every=steps)
    with torch.no_grad():
        translated = result.model.eval()(test_plain).clamp(0, 1)
    own, other = layout_kept(translated, test_truth)
    return {
        "name": name, "what": what, "steps": steps, "objective": {k: v for k, v in arguments.items()},
        "network": {"wide": wide, "narrow": narrow,
                    "parameters": sum(p.numel() for p in model.parameters())},
        "hair_transferred_percent": 100 * attribute_transferred(translated, test_plain, test_truth).mean().item(),
        "head_to_own_face_px": own, "head_to_other_faces_px": other,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", choices=sorted(RUNS),
                        help="run only these, and keep the other runs of an existing record")
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "domain_transfer_ablation.json")
    args = parser.parse_args()
    # The ImageNet weights if they are cached (or can be downloaded), else, with
    # CXLIB_ALLOW_RANDOM_WEIGHTS=1, seeded random ones; the record says which.
    weights_label = imagenet_weights_status()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in tqdm(args.only or list(RUNS), desc="ablation"):
            rows.append(run_one(name, "imagenet", Path(tmp) / name.replace(" ", "-")))
            tqdm.write(f"{name}: hair {rows[-1]['hair_transferred_percent']:.0f}%, head "
                       f"{rows[-1]['head_to_own_face_px']:.1f} px from its own face, "
                       f"{rows[-1]['head_to_other_faces_px']:.1f} from the others'")
    if args.only and args.out.is_file():  # keep the runs not redone, in the order of RUNS
        kept = {run["name"]: run for run in json.loads(args.out.read_text())["runs"]}
        kept.update({run["name"]: run for run in rows})
        rows = [kept[name] for name in RUNS if name in kept]
    record = {
        "source": "python scripts/domain_ablation.py", "date": time.strftime("%Y-%m-%d"),
        "vgg_weights": weights_label, "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "setting": {"size": SIZE, "train_images": COUNT, "batch": BATCH, "lr": LR, "test_faces": 8},
        "runs": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
