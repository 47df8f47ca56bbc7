"""``python -m lit_score …`` is ``lit-score …``."""

from lit_score.cli import main

if __name__ == "__main__":
    main()
