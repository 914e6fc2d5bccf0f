"""The shipped case library (TOML files; see README.md here). Installed as ``iratrainer.cases``."""
