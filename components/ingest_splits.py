"""Assigns every imported image to a split: the source's own splits, or an eval split
carved by patient (both knees of a patient together), stratified by the patient's worst
grade and deterministic for a seed."""

from __future__ import annotations

import hashlib
import logging
import math
from collections import defaultdict

from components import features
from components.ingest_sources import TEST_SPLIT, IngestError, Item, listing

logger = logging.getLogger("components.ingestion")


def check_patient_leaks(items: list[Item]) -> None:
    splits_of: dict[str, set[str]] = defaultdict(set)
    for item in items:
        if item.given_split is not None:
            splits_of[item.patient].add(item.given_split)
    leaks = [f"{p} ({', '.join(sorted(s))})" for p, s in sorted(splits_of.items()) if len(s) > 1]
    if leaks:
        raise IngestError(
            f"{len(leaks)} patient(s) appear in more than one given split "
            f"(a patient-level leak): {listing(leaks)}")


def assign_splits(items: list[Item], eval_fraction: float,
                   seed: int) -> tuple[str, list[str]]:
    """Sets ``item.split``; returns the split policy and any warnings."""
    given = {item.given_split for item in items}
    if features.EVAL_SPLIT in given:
        if features.TRAIN_SPLIT not in given:
            raise IngestError("the source has an eval split but no train split")
        for item in items:
            item.split = item.given_split
        policy = "given"
    else:
        if None not in given and features.TRAIN_SPLIT not in given:
            raise IngestError("the source has no train split to carve eval from")
        pool = [i for i in items if i.given_split != TEST_SPLIT]
        for item in items:
            item.split = item.given_split or features.TRAIN_SPLIT
        for item in _carve_eval(pool, eval_fraction, seed):
            item.split = features.EVAL_SPLIT
        policy = "patient_stratified"

    for split in (features.TRAIN_SPLIT, features.EVAL_SPLIT):
        if not any(item.split == split for item in items):
            raise IngestError(
                f"split '{split}' would have no images (carving needs at least two "
                "patients with the same worst grade)")
    warnings = []
    eval_grades = {i.grade for i in items if i.split == features.EVAL_SPLIT}
    missing = sorted({i.grade for i in items} - eval_grades)
    if missing:
        warnings.append(f"grade(s) {missing} have no image in the eval split")
        logger.warning(warnings[-1])
    return policy, warnings


def _carve_eval(pool: list[Item], eval_fraction: float, seed: int) -> list[Item]:
    """Picks eval images by patient, stratified by each patient's worst grade.

    Patients are ordered by a seeded hash of their id, so the choice does not
    depend on listing order and adding patients does not reshuffle the rest.
    Each stratum with two or more patients gives at least one to eval and
    keeps at least one in train.
    """
    by_patient: dict[str, list[Item]] = defaultdict(list)
    for item in pool:
        by_patient[item.patient].append(item)
    strata: dict[int, list[str]] = defaultdict(list)
    for patient, knees in by_patient.items():
        strata[max(k.grade for k in knees)].append(patient)
    chosen = []
    for grade in sorted(strata):
        patients = sorted(strata[grade], key=lambda p: seeded_hash(seed, p))
        n = len(patients)
        take = 0 if n < 2 else min(max(math.floor(n * eval_fraction + 0.5), 1), n - 1)
        for patient in patients[:take]:
            chosen.extend(by_patient[patient])
    return chosen


def seeded_hash(seed: int, text: str) -> str:
    return hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()
