"""``python -m iratrainer`` runs the command-line interface."""

from iratrainer.cli import main

raise SystemExit(main())
