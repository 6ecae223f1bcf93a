"""The original's comparison workflow (``analysis/workflow_comp`` of W-L/fedflow at 76a111a): its
study files and app configs, held verbatim in ``tests/original/workflow_comp``, run unchanged
through the native twins of FeatureCloud's ``federated-svd`` and ``random-forest`` apps, on
small generated data laid out as its ``prep_data_federated.py`` / ``prep_data_centralised.py``
lay out the cohort they download."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_wine

from fedflow.errors import StudyError
from fedflow.study import load_study
from tests.helpers import fedflow

WORKFLOW = Path(__file__).parent / "workflow_comp"
ACCESSIONS = ["PRJEB10878", "PRJEB6070", "PRJEB7774", "PRJNA429097", "PRJNA731589"]
SVD_TWIN = "fedflow.apps.fc_svd:FeatureCloudSVD"
FOREST_TWIN = "fedflow.apps.fc_forest:FeatureCloudForest"

# sha256 of analysis/workflow_comp/configs/** at github.com/W-L/fedflow 76a111a
VERBATIM = {
    "configs/biosphere/federated-svd/config.yaml": (
        "39e49c14e75e640d233bf8d931357f7568ddc53c2b676b0f92b993d0ba49b150"
    ),
    "configs/biosphere/federated-svd/config_fedsim_cent.toml": (
        "e7b8293f8392ebfa64b11482889a6055dec49aa33d060164d9174b9c384790c6"
    ),
    "configs/biosphere/federated-svd/config_fedsim_fed.toml": (
        "b8f8636be0916698f7e6de9306d1cc5afc5d3aa88311052690b3e66e41352e05"
    ),
    "configs/biosphere/random-forest/config.yml": (
        "647c8cd00711291f109720e2c2bc0daf6e7eab9154655b584a9d262e02e7f313"
    ),
    "configs/biosphere/random-forest/config_fedsim_cent.toml": (
        "fa9ced0c804407568f06a5fb3e36029fa0731a4e3857a6dcf6d7d1571e9996a4"
    ),
    "configs/biosphere/random-forest/config_fedsim_fed.toml": (
        "e2c210c1370da8112583b31a5dbf303b21eeec537006809a7c01ad1bcaeb60f8"
    ),
    "configs/vagrant/federated-svd/config.yaml": (
        "39e49c14e75e640d233bf8d931357f7568ddc53c2b676b0f92b993d0ba49b150"
    ),
    "configs/vagrant/federated-svd/config_fedsim_cent.toml": (
        "e7a0ccfce45060eb1c88c2c7768dc83e7ca63429532a7b57eabb768fad5ac1a1"
    ),
    "configs/vagrant/federated-svd/config_fedsim_fed.toml": (
        "f062677bb2e46432f0bfc5715f30fdec7a2238e54de287e99bf9ea9509689707"
    ),
    "configs/vagrant/random-forest/config.yml": (
        "647c8cd00711291f109720e2c2bc0daf6e7eab9154655b584a9d262e02e7f313"
    ),
    "configs/vagrant/random-forest/config_fedsim_cent.toml": (
        "c1d308ad0cd65aa9191a42af4c63d27dbbed700d9d732ed18f3e934c2ffbcdb9"
    ),
    "configs/vagrant/random-forest/config_fedsim_fed.toml": (
        "ba9eaecb8013887bfad35399b40edba0312f04e1c9cd018322b7b78346467a88"
    ),
}


def test_the_workflow_files_are_the_originals() -> None:
    held = sorted(str(p.relative_to(WORKFLOW)) for p in WORKFLOW.rglob("*") if p.is_file())
    assert held == sorted(VERBATIM)
    for name, digest in VERBATIM.items():
        assert hashlib.sha256((WORKFLOW / name).read_bytes()).hexdigest() == digest, name
    fed = (WORKFLOW / "configs/vagrant/random-forest/config_fedsim_fed.toml").read_text()
    # the studies name no tool: the app is set in their FeatureCloud project (project_id)
    assert "tool" not in fed and "project_id = 17308" in fed and "timeout = 600" in fed


def _workflow(tmp_path: Path) -> Path:
    """The workflow's root: its configs, and data laid out as its preparation scripts write it
    (sklearn's breast_cancer and wine standing in for the downloaded cohort)."""
    root = tmp_path / "workflow_comp"
    shutil.copytree(WORKFLOW, root)
    # random-forest: one row per sample, the features then health_status, no index
    cohort = load_breast_cancer(as_frame=True).frame
    cohort.columns = [f"msp_{i:04d}" for i in range(30)] + ["health_status"]
    cohort = cohort.sample(frac=1.0, random_state=99).reset_index(drop=True)
    parts = np.array_split(np.arange(len(cohort)), len(ACCESSIONS))
    for acc, rows in zip(ACCESSIONS, parts, strict=True):
        folder = root / "data" / "random-forest" / acc
        folder.mkdir(parents=True)
        cohort.iloc[rows].to_csv(folder / "input.csv", sep=",", index=False, header=True)
    (root / "data/random-forest/cent").mkdir()
    frames = [pd.read_csv(root / "data/random-forest" / a / "input.csv") for a in ACCESSIONS]
    pd.concat(frames, axis=0).to_csv(root / "data/random-forest/cent/input.csv", index=False)
    # federated-svd: one row per feature (index msp_id), one column per sample
    values = load_wine().data
    features = pd.Index([f"msp_{j:04d}" for j in range(values.shape[1])], name="msp_id")
    parts = np.array_split(np.arange(len(values)), len(ACCESSIONS))
    for acc, rows in zip(ACCESSIONS, parts, strict=True):
        folder = root / "data" / "federated-svd" / acc
        folder.mkdir(parents=True)
        frame = pd.DataFrame(values[rows].T, index=features, columns=[f"s{r}" for r in rows])
        frame.to_csv(folder / "input.csv", sep=",", index=True, header=True)
    (root / "data/federated-svd/cent").mkdir()
    frames = [pd.read_csv(root / "data/federated-svd" / a / "input.csv") for a in ACCESSIONS]
    combined = pd.concat([frames[0]] + [f.drop(columns="msp_id") for f in frames[1:]], axis=1)
    combined.to_csv(root / "data/federated-svd/cent/input.csv", sep=",", index=False)
    return root


def _run_dir(done: object) -> Path:
    return Path(done.stdout.strip().splitlines()[-1])  # type: ignore[attr-defined]


def test_the_workflow_studies_select_the_twins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _workflow(tmp_path)
    monkeypatch.chdir(root)  # the workflow runs from its root; its data paths are relative to it
    for provider in ("vagrant", "biosphere"):
        for tool, twin, n in (("federated-svd", SVD_TWIN, 5), ("random-forest", FOREST_TWIN, 5)):
            for mode, clients in (("fed", n), ("cent", 1)):
                path = Path(f"configs/{provider}/{tool}/config_fedsim_{mode}.toml")
                study = load_study(path)
                assert study.app == twin
                assert len(study.clients) == clients
                assert all(Path(c.data[0]).name == "input.csv" for c in study.clients)
                assert all(len(c.data) == 1 for c in study.clients)
                assert study.timeout == (
                    1200.0 if (tool, mode) == ("random-forest", "cent") else 600.0
                )
                notices = "\n".join(study.notices)
                assert "no app or tool given" in notices
                assert "[debug] nodeps has no effect here" in notices
                assert Path(study.outdir) == root / f"results/{provider}/{tool}/{mode}"
    forest = load_study(Path("configs/vagrant/random-forest/config_fedsim_fed.toml"))
    assert forest.params["label"] == "health_status" and forest.params["estimators"] == 100
    assert forest.params["random_state"] == 42 and forest.params["test_rows"] == {}
    svd = load_study(Path("configs/vagrant/federated-svd/config_fedsim_fed.toml"))
    assert svd.params["pcs"] == 10 and svd.params["highly_variable"] is False
    assert svd.params["coordinator"] == "site-1" and svd.params["delimiter"] == "\t"
    # the config names variance_explained_file, a key the app does not read: its defaults apply
    assert svd.params["eigenvalues"] == "eigenvalues.tsv"
    assert svd.params["explained_variance"] == "explained_variance.tsv"
    assert svd.params["projections"] == "localData.csv"
    assert svd.min_count == 1 and svd.params["min_samples"] == 5


@pytest.mark.slow
def test_the_workflow_runs_federated_and_centralized_svd(tmp_path: Path) -> None:
    root = _workflow(tmp_path)
    runs = {}
    for mode in ("fed", "cent"):
        done = fedflow("-c", f"configs/vagrant/federated-svd/config_fedsim_{mode}.toml", cwd=root)
        assert done.returncode == 0, done.stderr
        runs[mode] = _run_dir(done)
        assert runs[mode].is_relative_to(root / "results/vagrant/federated-svd" / mode)
    fed = json.loads((runs["fed"] / "result.json").read_text())["result"]
    cent = json.loads((runs["cent"] / "result.json").read_text())["result"]
    # the federated decomposition is exact: the same as one client holding every sample
    np.testing.assert_allclose(fed["singular_values"], cent["singular_values"], rtol=1e-10)
    assert fed["n_samples"] == cent["n_samples"] == 178
    combined = []
    for i in range(1, 6):  # what the workflow's combine_federated_svd.py reads
        site = runs["fed"] / "sites" / f"site-{i}"
        local = pd.read_csv(site / "localData.csv", sep="\t")
        assert list(local.columns) == ["Unnamed: 0"] + [str(j) for j in range(10)]
        combined.append(local.set_index("Unnamed: 0").to_numpy())
        right = pd.read_csv(site / "right_eigenvectors.tsv", sep="\t", index_col=0)
        assert right.shape[1] == 10 and right.index[0].startswith("s")
        assert (site / "config.yaml").read_text() == (
            root / "configs/vagrant/federated-svd/config.yaml"
        ).read_text()
    central = pd.read_csv(runs["cent"] / "sites/site-1/localData.csv", sep="\t", index_col=0)
    # each client's projections are its part of Z·G; summed over clients they are the whole
    np.testing.assert_allclose(sum(combined), central.to_numpy(), rtol=1e-8, atol=1e-9)


@pytest.mark.slow
def test_the_workflow_runs_the_federated_random_forest(tmp_path: Path) -> None:
    root = _workflow(tmp_path)
    study = "configs/vagrant/random-forest/config_fedsim_fed.toml"
    done = fedflow("-c", study, "--compare", cwd=root, timeout=300)
    assert done.returncode == 0, done.stderr
    # against the app run with one client holding every row (test rows = training rows here)
    assert "compare: matches scikit-learn" in done.stdout
    run = _run_dir(done)
    assert "min_count = 5" in done.stderr  # the leaf floor is announced
    rows = []
    for i, acc in enumerate(ACCESSIONS, start=1):
        site = run / "sites" / f"site-{i}"
        data = pd.read_csv(root / "data/random-forest" / acc / "input.csv")
        pred = pd.read_csv(site / "pred.csv", sep="\t")  # as combine_federated_randfor reads
        proba = pd.read_csv(site / "proba.csv", sep=",")
        true = pd.read_csv(site / "test.csv", sep="\t")
        assert list(pred.columns) == ["pred"] and list(proba.columns) == ["prob_0", "prob_1"]
        assert list(true["y_true"]) == list(data["health_status"])
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
        assert list(pred["pred"]) == list((proba["prob_1"] > proba["prob_0"]).astype(int))
        rows.append(pd.concat([true, proba, pred], axis=1))
    combined = pd.concat(rows)
    accuracy = float(np.mean(combined["y_true"] == combined["pred"]))
    result = json.loads((run / "result.json").read_text())["result"]
    assert result["test_accuracy"] == pytest.approx(accuracy, abs=1e-12)
    sizes = [len(pd.read_csv(root / "data/random-forest" / a / "input.csv")) for a in ACCESSIONS]
    shares = [int(100 * n / sum(sizes)) for n in sizes]  # the app's share per client
    assert list(result["trees_per_site"].values()) == shares
    assert result["n_trees"] == sum(shares) == 99


# -- one-line errors naming the client, the file and the key ------------------------------------
def _one_client(folder: Path, config_name: str, config: str, tool: str | None = None) -> Path:
    frame = load_breast_cancer(as_frame=True).frame.iloc[:60]
    frame.to_csv(folder / "input.csv", index=False)
    (folder / config_name).write_text(config)
    head = f"tool = '{tool}'\n" if tool else ""
    study = folder / "study.toml"
    study.write_text(
        f'{head}sim = true\n\n[[clients]]\nname = "alpha"\ndata = ["input.csv", "{config_name}"]\n'
    )
    return study


FOREST_YML = (WORKFLOW / "configs/vagrant/random-forest/config.yml").read_text()
SVD_YAML = (WORKFLOW / "configs/vagrant/federated-svd/config.yaml").read_text()


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "config.yml",
            FOREST_YML.replace('    label: "health_status"\n', ""),
            r"client 'alpha': config.yml: fc_random_forest.format.label is missing: add it",
        ),
        (
            "config.yml",
            FOREST_YML.replace("mode: file", "mode: directory"),
            r"client 'alpha': config.yml: fc_random_forest.split.mode is 'directory'",
        ),
        (
            "config.yml",
            FOREST_YML.replace("estimators: 100", "estimators: many"),
            r"config.yml: fc_random_forest.estimators must be a whole number ≥ 1, not 'many'",
        ),
        (
            "config.yml",
            FOREST_YML.replace('train: "input.csv"', 'train: "train.csv"'),
            r"client 'alpha': the app reads 'train.csv' \(fc_random_forest.input.train in "
            r"config.yml\) but the data list holds input.csv",
        ),
        (
            "config.yaml",
            FOREST_YML,
            r"client 'alpha': random-forest reads config.yml .* not config.yaml: rename it",
        ),
        (
            "config.yaml",
            SVD_YAML.replace("    send_projections: false", "    send_projections: true"),
            r"client 'alpha': config.yaml: fc_pca.privacy.send_projections is true",
        ),
        (
            "config.yaml",
            SVD_YAML.replace('    delimiter: ","  # field separator in the input file \n', ""),
            r"client 'alpha': config.yaml: fc_pca.input.delimiter is missing: add it",
        ),
        (
            "config.yaml",
            SVD_YAML.replace("pcs: 10", "pcs: 0"),
            r"config.yaml: fc_pca.algorithm.pcs must be a whole number ≥ 1, not 0",
        ),
    ],
)
def test_a_bad_app_config_is_one_line_naming_client_file_and_key(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    tool = "random-forest" if "fc_random_forest" in text else "federated-svd"
    study = _one_client(tmp_path, name, text, tool)
    with pytest.raises(StudyError, match=message) as caught:
        load_study(study)
    assert "\n" not in str(caught.value)


def test_clients_whose_configs_differ_are_refused(tmp_path: Path) -> None:
    frame = load_breast_cancer(as_frame=True).frame
    for i in (1, 2):
        (tmp_path / f"c{i}").mkdir()
        frame.iloc[i * 100 : i * 100 + 60].to_csv(tmp_path / f"c{i}/input.csv", index=False)
        text = FOREST_YML if i == 1 else FOREST_YML.replace("random_state: 42", "random_state: 7")
        (tmp_path / f"c{i}/config.yml").write_text(text)
    (tmp_path / "study.toml").write_text(
        "tool = 'random-forest'\n\n[[clients]]\ndata = ['c1/input.csv', 'c1/config.yml']\n\n"
        "[[clients]]\ndata = ['c2/input.csv', 'c2/config.yml']\n"
    )
    with pytest.raises(StudyError, match=r"differ in random_state \(site-1: 42, site-2: 7\)"):
        load_study(tmp_path / "study.toml")


def test_a_tool_in_the_study_selects_the_twin_and_a_test_file_is_counted(tmp_path: Path) -> None:
    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [f"f{i}" for i in range(30)] + ["label"]
    frame.iloc[:100].to_csv(tmp_path / "train.csv", sep=";", index=False)
    frame.iloc[100:137].to_csv(tmp_path / "test.csv", sep=";", index=False)
    config = FOREST_YML.replace('test: "input.csv"', 'test: "test.csv"', 1)
    config = config.replace('train: "input.csv"', 'train: "train.csv"')
    config = config.replace('sep: ","', 'sep: ";"').replace("health_status", "label")
    (tmp_path / "config.yml").write_text(config)
    (tmp_path / "study.toml").write_text(
        "tool = 'random-forest'\nmin_count = 1\n\n[[clients]]\n"
        "data = ['notes.txt', 'test.csv', 'config.yml', 'train.csv']\n"
    )
    study = load_study(tmp_path / "study.toml")
    assert study.app == FOREST_TWIN
    assert [Path(p).name for p in study.clients[0].data] == ["train.csv", "test.csv"]
    assert study.clients[0].sep == ";"
    assert study.params["test_rows"] == {"site-1": 37}
    assert study.params["min_samples_leaf"] == 1
    assert "notes.txt unused, as in the app" in "\n".join(study.notices)
    assert "exactly the app's trees and files" in "\n".join(study.notices)


def test_an_svd_config_read_as_the_app_reads_it(tmp_path: Path) -> None:
    """``apps/svd/config.py`` sets the scaling keys one by one in one try (the first missing
    key leaves the rest at its defaults) and, without output.explained_variance, names the
    eigenvalues file eigenvalues.tsv whatever output.eigenvalues says."""
    config = SVD_YAML.replace("    highly_variable: false", "").replace(
        "eigenvalues: eigenvalues.tsv", "eigenvalues: ev.tsv"
    )
    study = load_study(_one_client(tmp_path, "config_pca.yml", config, "federated-svd"))
    params = study.params
    assert params["center"] is True and params["variance"] is True  # read before the gap
    assert params["highly_variable"] is True  # missing: the app's default, and from here on
    assert params["log_transform"] is True and params["max_nan_fraction"] == 0.5
    assert params["perc_highly_var"] == 0.1
    assert params["eigenvalues"] == "eigenvalues.tsv"
    assert params["config_name"] == "config_pca.yml"
    assert "LOWEST standard deviation" in "\n".join(study.notices)
    with_ev = config.replace(
        "    eigenvalues: ev.tsv", "    eigenvalues: ev.tsv\n    explained_variance: x.tsv"
    )
    study = load_study(_one_client(tmp_path, "config_pca.yml", with_ev, "federated-svd"))
    assert study.params["eigenvalues"] == "ev.tsv" and study.params["explained_variance"] == "x.tsv"


def test_the_twins_read_headerless_numbers_only_where_the_app_does(tmp_path: Path) -> None:
    """random-forest's input has a header (pandas' default), unlike mean-app's."""
    study = load_study(_one_client(tmp_path, "config.yml", FOREST_YML, "random-forest"))
    assert study.clients[0].header is True and study.clients[0].columns is None
