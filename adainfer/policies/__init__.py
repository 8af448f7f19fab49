"""Exit policies: when may an instance stop? Fitted on train layer records."""

from adainfer.policies.base import ExitPolicy, NeverExit, first_exit
from adainfer.policies.crf import CRFPolicy
from adainfer.policies.svm import SVMPolicy
from adainfer.policies.threshold import GapThreshold

__all__ = ["CRFPolicy", "ExitPolicy", "GapThreshold", "NeverExit", "SVMPolicy", "first_exit"]
