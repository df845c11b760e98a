"""People: subjects as a resource (list, rename, merge, move a face, erase), who the faces of a search are (a vote
over matches at the calibrated threshold, one subject per face of a photo), and feedback on matches."""

from app.people.clusters import ClusterPage, Clusters, ClusterView
from app.people.clusters_run import ClusterParams, ClusterRun
from app.people.clusters_state import ClusterState
from app.people.enrolled import EnrolledSample, sample_enrolled
from app.people.feedback import FeedbackPairs
from app.people.glance import Overview, Similar
from app.people.identity import Candidate, Identity, assign, candidates, identify_photo
from app.people.names import MAX_NAME, NAME_PATTERN, subject_name
from app.people.people import FacePage, People, SubjectPage, SubjectSummary
from app.people.searched import IdentifiedFace, PeopleFaceService
from app.people.state import PEOPLE_FILE, FeedbackRecord, PeopleState

__all__ = [
    "MAX_NAME",
    "NAME_PATTERN",
    "PEOPLE_FILE",
    "Candidate",
    "ClusterPage",
    "ClusterParams",
    "ClusterRun",
    "ClusterState",
    "ClusterView",
    "Clusters",
    "EnrolledSample",
    "FacePage",
    "FeedbackPairs",
    "FeedbackRecord",
    "IdentifiedFace",
    "Identity",
    "Overview",
    "People",
    "PeopleFaceService",
    "PeopleState",
    "Similar",
    "SubjectPage",
    "SubjectSummary",
    "assign",
    "candidates",
    "identify_photo",
    "sample_enrolled",
    "subject_name",
]
