"""Train the small scikit-learn example models into an MLServer model repository.

Run with MLServer's own interpreter (``.venv-mlserver/bin/python``) so the pickles match the
scikit-learn that serves them. Datasets ship with scikit-learn: nothing is downloaded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import joblib  # type: ignore[import-not-found,unused-ignore]
from sklearn.datasets import load_diabetes, load_iris  # type: ignore[import-not-found,unused-ignore]
from sklearn.linear_model import LinearRegression, LogisticRegression  # type: ignore[import-not-found,unused-ignore]
from sklearn.neighbors import KNeighborsClassifier  # type: ignore[import-not-found,unused-ignore]
from sklearn.tree import DecisionTreeClassifier  # type: ignore[import-not-found,unused-ignore]


def _write(root: Path, name: str, model: object, method: str) -> None:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, folder / "model.joblib")
    settings = {
        "name": name,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "v1", "extra": {"method": method}},
    }
    (folder / "model-settings.json").write_text(json.dumps(settings, indent=2))


def main(root: Path) -> None:
    iris_x, iris_y = load_iris(return_X_y=True)
    diab_x, diab_y = load_diabetes(return_X_y=True)
    _write(root, "iris-lr", LogisticRegression(max_iter=500).fit(iris_x, iris_y), "predict")
    _write(root, "iris-tree", DecisionTreeClassifier(random_state=0).fit(iris_x, iris_y), "predict")
    _write(root, "iris-knn", KNeighborsClassifier(n_neighbors=5).fit(iris_x, iris_y), "predict")
    _write(root, "diabetes-lr", LinearRegression().fit(diab_x, diab_y), "predict")
    print(f"trained 4 models into {root}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
