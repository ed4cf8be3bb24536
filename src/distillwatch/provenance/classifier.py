"""A style classifier for one vendor's outputs, trained on a labelled sample, never proof.

Where a data team holds a labelled sample (texts known to come from a vendor's model, and texts
known not to: their own engineers' code, human-written answers), :class:`VendorClassifier`
learns what separates the two (character n-grams, hashed so memory stays bounded whatever the
vocabulary; a logistic regression over TF-IDF weights) and measures itself on a held-out part
of the sample before it scores anything: the threshold is the lowest score at which held-out
precision reaches ``target_precision`` *and* at most ``max_fpr`` of the other texts score (the
false-positive rate, which does not depend on how rare the vendor's text is in the corpus to be
scanned, as precision does), and the figures there are reported with every finding. What it measures is resemblance to *this* sample's style: a person who writes
like the vendor's model is scored like it, and a vendor's text outside the sample's domain may
not be; findings are for a human to check, next to the scan's markers and near-duplicates.

Score direction: :meth:`VendorClassifier.score_samples` is the estimated probability that a text is the
vendor's (higher: more like the vendor sample).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import precision_recall_curve, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

#: Each text is cut at this many characters for the classifier (the style shows early).
MAX_CLASSIFIER_CHARS = 20_000


class VendorClassifier(ClassifierMixin, BaseEstimator):
    """Vendor-style classifier with a threshold chosen and measured on held-out data.

    ``fit(texts, y)``: ``y`` is 1 for the vendor's texts, 0 for the others; ``test_size`` of
    them (stratified, ``random_state``) are held out. Learned state: ``model_`` (fitted on the
    rest), ``threshold_``, ``heldout_precision_``, ``heldout_recall_``, ``heldout_fpr_`` (the
    share of the other texts flagged: what precision becomes on a corpus where the vendor's
    text is rarer than in the sample), ``heldout_auc_``, ``heldout_n_``. When no threshold meets both bounds on the held-out part, the
    classifier refuses to flag anything (``threshold_`` is above 1) rather than flag at a
    precision nobody chose.
    """

    def __init__(self, ngram_range: tuple[int, int] = (3, 5), n_features: int = 2**18,
                 C: float = 4.0, target_precision: float = 0.95, max_fpr: float = 0.02,
                 test_size: float = 0.25, random_state: int = 0) -> None:  # fmt: skip
        self.ngram_range = ngram_range
        self.n_features = n_features
        self.C = C
        self.target_precision = target_precision
        self.max_fpr = max_fpr
        self.test_size = test_size
        self.random_state = random_state

    def _pipeline(self) -> Pipeline:
        return Pipeline([
            ("hash", HashingVectorizer(analyzer="char_wb", ngram_range=self.ngram_range,
                                       n_features=self.n_features, alternate_sign=False,
                                       norm=None, lowercase=False)),
            ("tfidf", TfidfTransformer(sublinear_tf=True)),
            ("logit", LogisticRegression(C=self.C, max_iter=2000, class_weight="balanced")),
        ])  # fmt: skip

    def fit(self, X: Sequence[str], y: Sequence[int]) -> VendorClassifier:
        texts = [t[:MAX_CLASSIFIER_CHARS] for t in X]
        labels = np.asarray(y, dtype=int)
        if len(texts) != len(labels):
            raise ValueError("one label per text")
        counts = np.bincount(labels, minlength=2)
        if len(counts) > 2 or min(counts) < 10:
            raise ValueError(
                f"need at least 10 texts of each class (vendor {counts[1]}, other {counts[0]})"
            )
        train, test, y_train, y_test = train_test_split(
            texts, labels, test_size=self.test_size, stratify=labels,
            random_state=self.random_state,
        )  # fmt: skip
        self.model_ = self._pipeline().fit(train, y_train)
        scores = self.model_.predict_proba(test)[:, 1]
        precision, recall, thresholds = precision_recall_curve(y_test, scores)
        others = np.sort(scores[y_test == 0])
        # Share of the other texts at or above each threshold (searchsorted on the sorted scores).
        fpr = 1.0 - np.searchsorted(others, thresholds, side="left") / max(1, len(others))
        ok = np.flatnonzero((precision[:-1] >= self.target_precision) & (fpr <= self.max_fpr))
        if len(ok):
            best = ok[0]  # the lowest threshold at the target: the most recall
            self.threshold_ = float(thresholds[best])
            self.heldout_precision_ = float(precision[best])
            self.heldout_recall_ = float(recall[best])
        else:
            self.threshold_, self.heldout_precision_, self.heldout_recall_ = 1.01, float("nan"), 0.0
        self.heldout_fpr_ = float(np.mean(others >= self.threshold_)) if len(others) else 0.0
        self.heldout_auc_ = float(roc_auc_score(y_test, scores))
        self.heldout_n_ = len(y_test)
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, X: Sequence[str]) -> np.ndarray:
        """Columns: not the vendor's, the vendor's."""
        check_is_fitted(self, "model_")
        return self.model_.predict_proba([t[:MAX_CLASSIFIER_CHARS] for t in X])

    def score_samples(self, X: Sequence[str]) -> np.ndarray:
        """Per text, the estimated probability that it is the vendor's (higher: more like it)."""
        return self.predict_proba(X)[:, 1]

    def predict(self, X: Sequence[str]) -> np.ndarray:
        return (self.score_samples(X) >= self.threshold_).astype(int)

    def describe(self) -> str:
        """The held-out figures a finding repeats (what a reader needs to weigh it)."""
        check_is_fitted(self, "model_")
        if self.threshold_ > 1:
            return (f"no threshold reached precision {self.target_precision:.2f} with at most "
                    f"{self.max_fpr:.1%} of the other texts flagged on "
                    f"{self.heldout_n_} held-out texts (AUC {self.heldout_auc_:.2f}): flags nothing")  # fmt: skip
        return (f"threshold {self.threshold_:.2f}: held-out precision {self.heldout_precision_:.2f}, "
                f"recall {self.heldout_recall_:.2f}, flags {self.heldout_fpr_:.1%} of the other texts, "
                f"AUC {self.heldout_auc_:.2f} on {self.heldout_n_} labelled texts")  # fmt: skip

    def summary(self) -> dict[str, Any]:
        check_is_fitted(self, "model_")
        return {"threshold": self.threshold_, "heldout_precision": self.heldout_precision_,
                "heldout_recall": self.heldout_recall_, "heldout_fpr": self.heldout_fpr_,
                "heldout_auc": self.heldout_auc_,
                "heldout_n": self.heldout_n_, "target_precision": self.target_precision,
                "max_fpr": self.max_fpr}  # fmt: skip
