"""Exit policies: when may an instance stop? Fitted on train layer records."""

from adainfer.policies.base import ExitPolicy, NeverExit, first_exit, load_policy
from adainfer.policies.crf import CRFPolicy
from adainfer.policies.oracle import OracleConsistent, OracleGold
from adainfer.policies.state import StatePolicy
from adainfer.policies.svm import LogRegPolicy, SVMPolicy
from adainfer.policies.threshold import GapThreshold

__all__ = [
    "CRFPolicy",
    "ExitPolicy",
    "GapThreshold",
    "LogRegPolicy",
    "NeverExit",
    "OracleConsistent",
    "OracleGold",
    "SVMPolicy",
    "StatePolicy",
    "first_exit",
    "load_policy",
]
