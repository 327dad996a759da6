"""``python -m cli``: the ``thalamus`` command."""

from cli.main import main

main()
