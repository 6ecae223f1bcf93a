"""Run FeatureCloud's federated SVD app's own code offline and compare its files with the twin's.

Usage: ``python tests/original/check_fc_svd_app.py CHECKOUT`` where CHECKOUT is a clone of
github.com/AnneHartebrodt/fc-federated-svd (tested at 672cf6a). Not part of the suite: the app's
code is not shipped with fedflow. The script drives the app's classes (``apps/svd``:
``FCConfig``, ``AggregatorFCFederatedPCA``, ``ClientFCFederatedPCA``) through the states its
``app.py`` runs for fewer than 20·k features (covariance, federated QR, projections), one client
folder per site, then runs fedflow's twin on the same files and prints, per output file, the
largest difference (rows matched by name, each component's sign matched: the app's row order is
that of a Python set and its signs are ARPACK's).
"""

from __future__ import annotations

import io
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import pandas as pd
import scipy
from sklearn.datasets import load_breast_cancer, load_wine

from fedflow.apps import Table
from fedflow.runtime.simulate import simulate
from fedflow.study.original import _Config, _svd_keys

CONFIG = Path(__file__).parent / "workflow_comp/configs/vagrant/federated-svd/config.yaml"


def _load_app(checkout: Path) -> types.SimpleNamespace:
    """Import the app's modules without its package ``__init__`` (which needs its web engine)."""
    scipy.random = np.random  # type: ignore[attr-defined]  # removed from scipy; the app uses it
    for name, path in (("apps", checkout / "apps"), ("apps.svd", checkout / "apps" / "svd")):
        module = types.ModuleType(name)
        module.__path__ = [str(path)]
        sys.modules[name] = module
    import apps.svd.config as cfg
    import apps.svd.FC_Federated_PCA as fcp
    from apps.svd.Aggregator_FC_Federated_PCA import AggregatorFCFederatedPCA
    from apps.svd.Client_FC_FederatedPCA import ClientFCFederatedPCA

    return types.SimpleNamespace(
        cfg=cfg, fcp=fcp, Aggregator=AggregatorFCFederatedPCA, Client=ClientFCFederatedPCA
    )


def run_app(app: types.SimpleNamespace, inputs: list[Path], out: Path) -> list[Path]:
    """Run the app's states for the covariance path; return each client's output folder."""
    clients = []
    for i, folder in enumerate(inputs):
        target = out / f"c{i}"
        target.mkdir(parents=True)
        app.cfg.INPUT_DIR, app.cfg.OUTPUT_DIR = str(folder), str(target)
        config = app.cfg.FCConfig()
        config.parse_configuration()
        app.fcp.INPUT_DIR, app.fcp.OUTPUT_DIR = str(folder), str(target)
        inst = app.Aggregator() if i == 0 else app.Client()
        inst.copy_configuration(config)
        inst.read_input_files()
        clients.append((inst, config))
    co = clients[0][0]
    # each broadcast is taken before the coordinator's own client step overwrites ``out``
    co.unify_row_names([c.out for c, _ in clients])
    message = co.out
    for c, _ in clients:
        c.set_parameters(message)
        c.select_rows(message)
        c.compute_sums()
    co.compute_means([c.out for c, _ in clients])
    message = co.out
    for c, _ in clients:
        c.compute_sum_of_squares(message)
    co.compute_std([c.out for c, _ in clients])
    message = co.out
    for c, config in clients:
        c.apply_scaling(message, highly_variable=config.highly_variable)
    if co.tabdata.scaled.shape[0] > 20 * co.k:
        raise SystemExit("more than 20·k features: the app iterates at random; use fewer")
    for c, _ in clients:
        c.compute_covariance()
        c.init_federated_qr()
    co.aggregate_randomized([c.out for c, _ in clients])
    message = co.out
    for c, _ in clients:
        c.project_u_cov(message)
        c.compute_local_eigenvector_norm()
    while True:
        co.aggregate_eigenvector_norms([c.out for c, _ in clients])
        if co.orthonormalisation_done:
            break
        norms = co.out
        for c, _ in clients:
            c.calculate_local_vector_conorms(norms)
        co.aggregate_conorms([c.out for c, _ in clients])
        message = co.out
        for c, _ in clients:
            c.orthogonalise_current(message)
            c.compute_local_eigenvector_norm()
    message = co.out
    for c, _ in clients:
        c.normalise_orthogonalised_matrix(message)
        c.subsample = False  # the random draws it would share are not saved with send: false
        c.compute_projections()
        c.save_projections()
        c.save_explained_variance()
        c.save_pca()
        c.save_scaled_data()
    return [out / f"c{i}" / config.output_dir for i, (_, config) in enumerate(clients)]


def compare(name: str, values: np.ndarray, n_sites: int, checkout: Path) -> float:
    """Return the largest difference between the app's files and the twin's."""
    config_text = CONFIG.read_text()
    features = pd.Index([f"msp_{j:03d}" for j in range(values.shape[1])], name="msp_id")
    parts = np.array_split(np.random.default_rng(0).permutation(len(values)), n_sites)
    app = _load_app(checkout)
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        inputs = []
        tables = {}
        for i, rows in enumerate(parts):
            folder = Path(tmp) / "in" / f"c{i}"
            folder.mkdir(parents=True)
            frame = pd.DataFrame(values[rows].T, index=features, columns=[f"s{r}" for r in rows])
            frame.to_csv(folder / "input.csv")
            (folder / "config.yaml").write_text(config_text)
            inputs.append(folder)
            tables[f"site-{i + 1}"] = Table.from_pandas(pd.read_csv(folder / "input.csv"))
        app_dirs = run_app(app, inputs, Path(tmp) / "out")
        import yaml

        section = yaml.safe_load(config_text)["fc_pca"]
        params = _svd_keys(_Config(CONFIG, config_text, section, "fc_pca", "check", "client"))
        sim = simulate("fedflow.apps.fc_svd:FeatureCloudSVD", params, tables, min_count=1)
        for i, app_dir in enumerate(app_dirs):
            twin = sim.site_outputs[f"site-{i + 1}"]
            for file, indexed in (
                (params["projections"], True),
                (params["left_eigenvectors"], True),
                (params["right_eigenvectors"], True),
                (params["eigenvalues"], False),
                (params["explained_variance"], True),
            ):
                a = pd.read_csv(
                    app_dir / file,
                    sep="\t",
                    index_col=0 if indexed else None,
                    header=0 if indexed else None,
                )
                t = pd.read_csv(
                    io.BytesIO(twin[file]),
                    sep="\t",
                    index_col=0 if indexed else None,
                    header=0 if indexed else None,
                )
                a = a.loc[t.index] if indexed else a
                av, tv = a.to_numpy(), t.to_numpy()
                if av.shape[1] > 1:
                    av = av * np.sign((av * tv).sum(axis=0))
                diff = float(np.abs(av - tv).max() / max(np.abs(tv).max(), 1e-300))
                worst = max(worst, diff)
                print(f"{name} site-{i + 1} {file:24} {av.shape} relative max diff {diff:.1e}")
    return worst


if __name__ == "__main__":
    checkout = Path(sys.argv[1])
    worst = max(
        compare("wine", load_wine().data, 5, checkout),
        compare("breast_cancer", load_breast_cancer().data, 3, checkout),
    )
    print(f"largest relative difference: {worst:.1e}")
    sys.exit(0 if worst < 1e-9 else 1)
