"""Region proposals: selective search (2x superpixels), MultiBox, their merge, a cache, recall."""
from proposals.cache import ProposalCache, compute_proposals, read_cache
from proposals.merge import (MultiBoxSourceConfig, ProposalConfig, SelectiveSearchConfig, build_proposer,
                             merge_boxes, propose, propose_with_sources)
from proposals.recall import recall_stats
from proposals.selective_search import selective_search

__all__ = [
    "MultiBoxSourceConfig", "ProposalCache", "ProposalConfig", "SelectiveSearchConfig", "build_proposer",
    "compute_proposals", "merge_boxes", "propose", "propose_with_sources", "read_cache", "recall_stats",
    "selective_search",
]
from proposals.multibox import MultiBox, MultiBoxMeta, kmeans_priors, multibox_loss  # noqa: E402, F401 (MultiBox)
