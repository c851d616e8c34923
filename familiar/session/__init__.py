"""Agent sessions: plan -> constrained fan-out -> integrate -> translate.

The package follows the seams of a session:

- :mod:`.store`: the session directory (layout, typed records, create / list / resume)
- :mod:`.schedule`: dependency release (pure)
- :mod:`.messages`: what is sent to the models (pure)
- :mod:`.answers`: what is kept of their answers (pure checks)
- :mod:`.calls`: asking a role, with one retry asked differently
- :mod:`.worker`: one subtask from prompt to record
- :mod:`.flow`: :class:`Session`, the flow itself

Role policy (planner choice, routing by difficulty, stealing) is :mod:`familiar.routing`.
"""

from familiar.routing import PLANNERS, check_runnable, planner_role
from familiar.session.flow import TASK_PROMPTS, Session, SessionOutcome
from familiar.session.messages import plain_merge
from familiar.session.store import (
    SessionRow,
    SessionState,
    SessionStore,
    SubtaskRecord,
    check_resumable,
    create_session_dir,
    list_sessions,
)

__all__ = [
    "PLANNERS",
    "TASK_PROMPTS",
    "Session",
    "SessionOutcome",
    "SessionRow",
    "SessionState",
    "SessionStore",
    "SubtaskRecord",
    "check_resumable",
    "check_runnable",
    "create_session_dir",
    "list_sessions",
    "plain_merge",
    "planner_role",
]
