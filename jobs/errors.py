"""Errors a job or an admin verb raises for bad input; the CLI turns them into exit code 2."""


class JobInputError(ValueError):
    """The request cannot be carried out as given (unknown id, wrong state, bad file...). Nothing was written."""


class JobLocked(RuntimeError):
    """Another run of an exclusive job holds its lock."""


class CandidateRejected(RuntimeError):
    """A trained or cold-start router bundle failed its load check; its version row says ``rejected`` and why."""
