"""Build the whole book, every chapter executed, into _build/html (run by ``bash scripts/build-book``).

The setting follows the hardware, as the chapters do: the paper's sizes with a CUDA GPU, the fast
setting on a CPU (a few minutes on two cores); ``--setting`` or ``CXLIB_SETTING`` overrides it.

The VGG19 weights: the ImageNet ones when they are in the torch hub cache or can be downloaded
now; otherwise the build says so once and uses the seeded random weights, which every page then
names. ``--weights`` chooses explicitly.

Each edition (setting, device, weights, and the cxlib and data/ sources it ran with) is built in
its own folder, ``_build/editions/<edition>/``, with its own Jupyter execution cache: switching
the setting or the weights executes what they change and never shows a page of another edition;
building an edition again executes only the chapters whose code changed. The finished edition's
HTML is copied to the output folder (default ``_build/html``), with ``edition.json`` saying what
it is. A build that fails leaves the output folder as it was.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bash scripts/build-book",
        description="Build the Contextual Loss book, every chapter executed, into _build/html. "
        "The first run creates the virtual environment .venv (VENV overrides) and installs "
        "what the book needs.",
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--setting", choices=("auto", "fast", "full"), default=None,
        help="fast: small sizes (minutes on a CPU); full: the paper's sizes (hours without a GPU); "
        "auto: full with a CUDA GPU, fast without. Default: CXLIB_SETTING, else CXLIB_FAST, else auto.",
    )
    parser.add_argument(
        "--weights", choices=("auto", "imagenet", "random"), default="auto",
        help="VGG19 weights. auto (default): ImageNet if cached or downloadable, else the labelled "
        "random weights; imagenet: fail without them; random: the labelled random weights.",
    )
    parser.add_argument("--output", type=Path, default=None,
                        help="where the HTML goes; default: _build/html in the book's folder")
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    return parser


def _say(message: str) -> None:
    print(f"build-book: {message}", file=sys.stderr, flush=True)


def _resolve_setting(choice: str | None, cuda: bool) -> tuple[str, str]:
    from cxlib.book.setting import FAST_ENV, SETTING_ENV, resolve_setting

    if choice and choice != "auto":
        os.environ[SETTING_ENV] = choice
    elif choice == "auto":
        os.environ.pop(SETTING_ENV, None)
        os.environ.pop(FAST_ENV, None)
    return resolve_setting(cuda_available=cuda)


def _imagenet_weights(choice: str) -> tuple[str, str]:
    """('imagenet' | 'random', what to tell the reader)."""
    from cxlib import vgg

    if choice == "random":
        return "random", "random VGG19 weights, as asked (--weights random)"
    path = vgg.imagenet_weights_path()
    if path.is_file():
        return "imagenet", f"ImageNet VGG19 weights from {path}"
    from torchvision.models import VGG19_Weights

    _say(f"the ImageNet VGG19 weights are not in {path}: downloading them once")
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(60)  # a network that drops packets fails in a minute, not hours
    try:
        VGG19_Weights.IMAGENET1K_V1.get_state_dict(progress=True, check_hash=True)
        return "imagenet", f"ImageNet VGG19 weights, downloaded to {path}"
    except Exception as error:  # noqa: BLE001 - the reason is reported
        reason = f"{type(error).__name__}: {error}"
    finally:
        socket.setdefaulttimeout(previous)
    if choice == "imagenet":
        raise SystemExit(f"build-book: --weights imagenet, but the weights cannot be had ({reason}). "
                         f"Put {vgg.IMAGENET_FILE} at {path} (see the README).")
    return "random", (
        f"the ImageNet VGG19 weights are unavailable ({reason}); the book is built with seeded "
        f"RANDOM weights, and every page says so. For the real edition put {vgg.IMAGENET_FILE} "
        f"at {path} (see the README) and build again."
    )


def _sources_digest(root: Path) -> str:
    """A digest of what the chapters' outputs depend on besides their own code (which the
    Jupyter cache tracks): cxlib's sources and the book's data/."""
    import cxlib

    digest = hashlib.sha256()
    folders = [Path(cxlib.__file__).resolve().parent, root / "data"]
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            digest.update(str(path.relative_to(folder)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def _prune(editions: Path, keep: str) -> None:
    """Drop the folders of the same edition built from older sources (never used again)."""
    prefix = keep.rsplit("-", 1)[0] + "-"
    for folder in editions.glob(prefix + "*"):
        if folder.name != keep and folder.is_dir():
            shutil.rmtree(folder)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    started = time.perf_counter()
    import torch

    cuda = torch.cuda.is_available()
    setting, reason = _resolve_setting(args.setting, cuda)
    weights, weights_note = _imagenet_weights(args.weights)
    _say(weights_note)
    device = "cuda" if cuda else "cpu"
    card = torch.cuda.get_device_name(0) if cuda else "cpu"
    root = args.root.resolve()
    edition = f"{setting}-{device}-{weights}-{_sources_digest(root)}"
    editions = root / "_build" / "editions"
    folder = editions / edition
    output = (args.output or root / "_build" / "html").resolve()
    _say(f"the {setting} edition ({reason}) on {card}, {weights} VGG19 weights: {folder}")
    if setting == "full" and not cuda:
        _say("warning: the full setting without a GPU trains networks for many hours")

    # The edition's own training runs (nothing trained for another edition is reloaded), and
    # no time limit on the training cells: that limit is for readers on Colab, and a build that
    # stopped a training early would publish (and cache) a half-trained chapter.
    env = dict(os.environ, CXLIB_SETTING=setting, CXLIB_RUNS_DIR=str(folder / "runs"),
               CXLIB_CELL_MINUTES="0")
    if weights == "random":
        env["CXLIB_VGG_WEIGHTS"] = "random"
    else:
        env.pop("CXLIB_VGG_WEIGHTS", None)
    # --all re-reads every page (cheap: executed notebooks come from the edition's cache), so a
    # chapter that failed in an earlier build is executed again instead of kept.
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    command = [str(jupyter_book), "build", str(root), "--all",
               "--warningiserror", "--keep-going", "--path-output", str(folder)]
    done = subprocess.run(command, env=env, check=False)
    if done.returncode != 0:
        _say(f"the build failed (exit status {done.returncode}); {output} was left as it was")
        return done.returncode
    _prune(editions, edition)
    if output.exists():
        shutil.rmtree(output)
    shutil.copytree(folder / "_build" / "html", output)
    import cxlib

    (output / "edition.json").write_text(json.dumps({
        "edition": edition, "setting": setting, "setting_reason": reason, "device": card,
        "vgg_weights": weights, "cxlib": cxlib.__version__, "torch": torch.__version__,
        "built": datetime.datetime.now().isoformat(timespec="seconds"),
    }, indent=1) + "\n")
    minutes = (time.perf_counter() - started) / 60
    _say(f"done in {minutes:.1f} min: {output / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
