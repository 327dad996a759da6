"""The daemon's router bundles (tiny encoder) serve the admin verbs' tests too."""

from tests.daemon.conftest import bundles  # noqa: F401  (a fixture, re-exported)
