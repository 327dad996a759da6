"""The ``thalamus`` command line: one module per verb group, each verb a typed function (see ``cli.main``)."""
