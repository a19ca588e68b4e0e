"""Stage-2 bags: readers per format → one validated BagSet → split/normalise → padded batches."""
from arcmil.data.bagset import SPLITS, BagSet, validate
from arcmil.data.batching import Batch, ResidentBags, collate, make_loader, scoring_loader
from arcmil.data.prepare import NORMALIZATIONS, Normalizer, assign_split, split_parts
from arcmil.data.readers import load_bags
from arcmil.data.writers import save_bags

__all__ = ["SPLITS", "NORMALIZATIONS", "BagSet", "Batch", "Normalizer", "ResidentBags", "assign_split", "collate",
           "load_bags", "make_loader", "save_bags", "scoring_loader", "split_parts", "validate"]
