"""``python -m sumi.evaluate ...``: the lm-eval command line with the ``sumi`` model registered,
e.g. ``python -m sumi.evaluate --model sumi --model_args pretrained=DIR --tasks TASK``.

A bad ``sumi`` model argument (no or a wrong ``pretrained=``, an unreadable tokenizer, a
canvas beyond the model's positions) is one line on stderr and exit status 2, not a traceback
from inside lm-eval.
"""

from __future__ import annotations

import sys

INSTALL_HINT = "pip install 'discdiff[eval]' (from a checkout: pip install -e '.[eval]')"


def main(argv: list[str] | None = None) -> int:
    """Run lm-eval's command line on ``argv`` (default ``sys.argv[1:]``); returns 0 when it
    finishes, raises ``SystemExit(2)`` when lm-eval is missing or a ``sumi`` model argument is bad."""
    try:
        from lm_eval.__main__ import cli_evaluate

        from sumi.evaluate.harness import ModelArgumentError  # registers "sumi"
    except ImportError as e:
        print(f"sumi: lm-eval is not installed ({e}); {INSTALL_HINT}", file=sys.stderr)
        raise SystemExit(2) from None
    saved = sys.argv
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]  # lm-eval reads sys.argv itself
    try:
        cli_evaluate()
    except ModelArgumentError as e:
        print(f"sumi: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
