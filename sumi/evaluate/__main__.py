"""``python -m sumi.evaluate ...``: the lm-eval command line with the ``sumi`` model registered,
e.g. ``python -m sumi.evaluate --model sumi --model_args pretrained=DIR --tasks TASK``."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    try:
        import sumi.evaluate.harness  # noqa: F401  (registers "sumi")
        from lm_eval.__main__ import cli_evaluate
    except ImportError as e:
        print(f"sumi: lm-eval is not installed ({e}); pip install 'sumi[eval]' (or pip install -e '.[eval]')",
              file=sys.stderr)
        raise SystemExit(2) from None
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
