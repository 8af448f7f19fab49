"""Exit policies: when may an instance stop? Fitted on train layer records."""

from adainfer.decide.policies.auto import AutoPolicy
from adainfer.decide.policies.base import ExitPolicy, NeverExit, first_exit, load_policy
from adainfer.decide.policies.crf import CRFPolicy
from adainfer.decide.policies.oracle import OracleConsistent, OracleGold
from adainfer.decide.policies.state import StatePolicy
from adainfer.decide.policies.svm import LogRegPolicy, SVMPolicy
from adainfer.decide.policies.threshold import GapThreshold

__all__ = [
    "AutoPolicy",
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
