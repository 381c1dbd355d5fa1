"""ganflow's MLflow tracking; `tracking.enabled: false` makes every call a no-op.

- store: which store (URIs), proving it works before any work (one line naming it, or with
  `tracking.fallback_to_local` a switch to the local sqlite store), lock retries, the experiment,
  a moved project; the read-only look-ups of the `ganflow` commands.
- outbox: the queue, worker thread and on-disk spool between the training loop and the store.
- run: `Tracker`, one stage's run: start, log, end.
- registry: the logged generator, its model version, the `champion` alias (at equal protocol; `ganflow champion`).
- provenance: git and DVC facts about a run (name, baseline commit, params diff).
- policy: the train and evaluate stages' run policy (one function each).

Tracking never stops, hangs or loses training: at start every failure of the store is one line; mid-run
one warning, and the calls are spooled and replayed when the store is back (see outbox).
"""

from ganflow.tracking.names import *  # noqa: F401,F403 - the tag names, shared by the stages and tests
from ganflow.tracking.run import Tracker  # noqa: F401
from ganflow.tracking.store import local_uri, project_root, resolve_uri, sqlite_uri  # noqa: F401
