"""``threespo-verl``: the project's command line.

    threespo-verl setup alfworld|webshop|model [--from DIR_OR_ARCHIVE] [--dest DIR]
    threespo-verl train algorithm=3spo env=household ...     (same as python -m threespo_verl.main ...)
    threespo-verl check                                      (is the plugin registered in verl?)
    threespo-verl demo [--quick]                             (the CPU demo: 3SPO vs GRPO on household, report)
    threespo-verl report RUN_DIR [RUN_DIR ...] [--out DIR]   (compare runs from their metrics.jsonl)

Subcommands are import strings resolved on use, so ``--help`` never imports verl, Ray or an environment engine.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

#: ``setup KIND`` -> "module:function" taking (source: Path | None, dest: Path | None, name: str | None) -> Path
SETUP_TARGETS = {
    "alfworld": "threespo_verl.envs.alfworld_setup:install",
    "webshop": "threespo_verl.envs.webshop.setup:install",
    "model": "threespo_verl.models:install",
}


def _resolve(target: str):
    module, fn = target.split(":")
    return getattr(importlib.import_module(module), fn)


def _cmd_setup(args: argparse.Namespace) -> int:
    install = _resolve(SETUP_TARGETS[args.kind])
    src = Path(args.source).expanduser() if args.source else None
    dest = Path(args.dest).expanduser() if args.dest else None
    where = install(source=src, dest=dest, name=args.name)
    print(f"{args.kind}: installed at {where}")
    return 0


def _cmd_train(args: argparse.Namespace, rest: list[str]) -> int:
    from threespo_verl import main as train_main

    sys.argv = ["threespo_verl.main", *rest]
    train_main.main()
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from threespo_verl.plugin import check_registration

    check_registration()
    print("threespo_verl plugin: all components registered in verl")
    return 0


#: subcommands that own their argument parsing: name -> "module:main(argv)"
PASSTHROUGH = {"demo": "threespo_verl.demo:main", "report": "threespo_verl.report:main",
               "eval": "threespo_verl.evaluate:main", "spa": "threespo_verl.spa.cli:main"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="threespo-verl", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("setup", help="install environment data or a model (offline-capable)")
    s.add_argument("kind", choices=sorted(SETUP_TARGETS), help="what to install")
    s.add_argument("name", nargs="?", default=None, help="for `model`: which model (default smollm2-135m)")
    s.add_argument("--from", dest="source", default=None, help="local folder or archive to install from")
    s.add_argument("--dest", default=None, help="where to install (default: the data home, $THREESPO_DATA)")
    s.set_defaults(func=_cmd_setup)

    t = sub.add_parser("train", help="run training (Hydra overrides follow, e.g. algorithm=3spo env=household)")
    t.set_defaults(func=_cmd_train, passthrough=True)

    c = sub.add_parser("check", help="verify that verl sees every component of the plugin")
    c.set_defaults(func=_cmd_check)
    sub.add_parser("demo", help="the CPU demo: train 3SPO and GRPO on household, evaluate, report (--quick)")
    sub.add_parser("report", help="compare runs from their metrics.jsonl: markdown + PNG plots")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] == "train":
        args = parser.parse_args(["train"])
        return _cmd_train(args, argv[1:])
    if argv and argv[0] in PASSTHROUGH:
        return int(_resolve(PASSTHROUGH[argv[0]])(argv[1:]) or 0)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        # expected failures (missing data, bad checksum, bad names, registration): one clear message, no traceback
        print(f"threespo-verl {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
