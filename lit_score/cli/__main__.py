"""``python -m lit_score.cli …`` is ``lit-score …`` (what a sweep launches for each run)."""

from lit_score.cli import main

if __name__ == "__main__":
    main()
