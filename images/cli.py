"""The command line of the image builder: ``python -m images.build`` (and ``make images``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from images.build import DEFAULT_RECIPES, RECIPES, Builder, BuildError, cache_dir
from images.registry import PushError, Registry

log = logging.getLogger("images")

PASSWORD_VARIABLE = "MODELFLEET_REGISTRY_PASSWORD"


def qualified(name: str) -> str:
    """``name`` as containerd stores it: ``modelfleet/operator:0.1.0`` → ``docker.io/…``.

    An archive names its image in the ``io.containerd.image.name`` annotation, and
    ``ctr images import`` keeps that name as it is, while the kubelet asks for the
    normalised one; written in full, the name is the same for both.
    """
    first = name.split("/", 1)[0]
    if "/" in name and ("." in first or ":" in first or first == "localhost"):
        return name
    return f"docker.io/{name}" if "/" in name else f"docker.io/library/{name}"


def main(argv: Sequence[str] | None = None) -> int:
    """Build the images named on the command line; optionally write archives or push."""
    parser = argparse.ArgumentParser(
        prog="python -m images.build",
        description="Build modelfleet's container images without Docker (needs root and "
        f"mmdebstrap). Images: {', '.join(RECIPES)}.",
    )
    parser.add_argument(
        "images", nargs="*", metavar="IMAGE", help=f"default: {' '.join(DEFAULT_RECIPES)}"
    )
    parser.add_argument("--gpu", action="store_true", help="also build ray-gpu")
    parser.add_argument("--cache", type=Path, help=f"cache directory (default {cache_dir()})")
    parser.add_argument(
        "--archive", type=Path, metavar="DIR", help="also write each image as DIR/IMAGE.tar"
    )
    parser.add_argument(
        "--push",
        metavar="REGISTRY",
        help="push each image to REGISTRY/<its name>; REGISTRY is host[:port][/prefix], "
        "e.g. registry.example.com/ml",
    )
    parser.add_argument("--insecure", action="store_true", help="plain HTTP to the registry")
    parser.add_argument(
        "--user", help=f"registry user name; the password is read from ${PASSWORD_VARIABLE}"
    )
    parser.add_argument(
        "--prune", action="store_true", help="afterwards, delete blobs no latest image uses"
    )
    args = parser.parse_args(argv)
    keys = list(args.images or DEFAULT_RECIPES)
    if args.gpu and "ray-gpu" not in keys:
        keys.append("ray-gpu")
    unknown = [key for key in keys if key not in RECIPES]
    if unknown:
        parser.error(f"unknown image {', '.join(unknown)}; choose from {', '.join(RECIPES)}")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    registry = None
    prefix = ""
    if args.push:
        host, _, prefix = args.push.partition("/")
        registry = Registry(
            host,
            insecure=args.insecure,
            username=args.user,
            password=os.environ.get(PASSWORD_VARIABLE),
        )
    builder = Builder(args.cache)
    try:
        for key in keys:
            built = builder.build(RECIPES[key])
            image = built.image
            line = (
                f"{image.name}  {image.digest}  {image.size / 1e6:.0f} MB  {built.seconds:.1f} s"
                f"{' (cached)' if built.cached else ''}"
            )
            if args.archive:
                archive = args.archive / f"{key}.tar"
                builder.store.save_archive(image, archive, qualified(image.name))
                line += f"  {archive}"
            if registry is not None:
                repository, _, tag = image.name.rpartition(":")
                repository = f"{prefix.strip('/')}/{repository}".lstrip("/")
                registry.push(builder.store, image, repository, tag)
                line += f"  pushed {registry.host}/{repository}:{tag}"
            print(line, flush=True)
        if args.prune:
            log.info("pruned %.0f MB", builder.prune() / 1e6)
    except (BuildError, PushError) as error:
        log.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
