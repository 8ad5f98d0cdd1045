"""`python -m llavamini.eval run|score|merge|list ...` (used by scripts/eval/*.sh)."""

from llavamini.eval.cli import main

if __name__ == "__main__":
    main()
