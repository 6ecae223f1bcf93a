"""The study file: original keys kept, new keys validated, errors naming key and file."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedflow.errors import AppError, StudyError
from fedflow.study import load_study
from fedflow.study.template import TEMPLATE

ORIGINAL = """
project_id = 0
tool = ""
sim = false
outdir = "results/"
provision_script = "provision.sh"
skip_data_transfer = false
skip_credential_transfer = false
skip_result_transfer = true
[debug]
verbose = true

[[clients]]
fc_username = "FC_USER"
data = []
coordinator = true
username = "USER"
hostname = "HOSTNAME"
port = 2222
sshkey = ".ssh/id_rsa"

[[clients]]
fc_username = "FC_USER2"
data = ["a.csv"]
coordinator = false
"""


def write(tmp_path: Path, text: str, name: str = "my-study.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_every_key_of_the_original_is_accepted(tmp_path: Path) -> None:
    study = load_study(write(tmp_path, 'platform = "featurecloud"\n' + ORIGINAL))
    assert study.project_id == 0 and study.skip_result_transfer and study.debug.verbose
    first, second = study.clients
    assert first.coordinator and first.port == 2222 and not first.is_local
    assert second.is_local and second.data == [str(tmp_path / "a.csv")]
    assert study.coordinator is first


def test_defaults(tmp_path: Path) -> None:
    study = load_study(
        write(
            tmp_path, 'app = "stats"\n[[clients]]\ndata = "x.csv"\n[[clients]]\ndata = ["y.csv"]\n'
        )
    )
    assert study.name == "my-study" and study.platform == "native"
    assert [c.name for c in study.clients] == ["site-1", "site-2"]
    assert study.min_count == 5 and study.timeout > 0 and study.dropna is False
    assert study.clients[0].data == [str(tmp_path / "x.csv")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('app = "stats"\nmincount = 3\n', "unknown key 'mincount' (did you mean 'min_count'?)"),
        (
            'app = "stats"\n[debug]\nverbos = true\n',
            "unknown key 'debug.verbos' (did you mean 'verbose'?)",
        ),
        (
            'app = "stats"\n[[clients]]\nport = 0\n',
            "clients[1].port: input should be greater than or equal to 1",
        ),
        (
            'app = "stats"\nplatform = "flower"\n',
            "platform: input should be 'native' or 'featurecloud'",
        ),
        (
            'app = "stats"\n[[clients]]\ncoordinator = true\n[[clients]]\ncoordinator = true\n',
            "more than one coordinator client",
        ),
        ('[[clients]]\ndata = "a.csv"\n', "no app given"),
        ('platform = "featurecloud"\n[[clients]]\n', "needs tool"),
        ("app = \n", "malformed TOML"),
        (
            'app = "stats"\nmin_count = "5"\n',
            "min_count: input should be a valid integer (got '5')",
        ),
        ('app = "stats"\ndropna = "yes"\n', "dropna: input should be a valid boolean (got 'yes')"),
        ('app = "stats"\ntimeout = "60"\n', "timeout: input should be a valid number"),
        ('app = "stats"\nseed = 1.5\n', "seed: input should be a valid integer"),
        (
            'app = "stats"\n[[clients]]\nport = "22"\n',
            "clients[1].port: input should be a valid integer",
        ),
        ('app = "stats"\n[debug]\nverbose = 1\n', "debug.verbose: input should be a valid boolean"),
        (
            'app = "stats"\nshare_extremes = true\n',
            "unknown key 'share_extremes' ('share_extremes' is a parameter of app 'stats': put it under [params])",
        ),
        (
            'app = "logistic-regression"\ntarget = "y"\n',
            "unknown key 'target' ('target' is a parameter of app 'logistic-regression': put it under [params])",
        ),
        (
            'app = "cox"\nshare_extremes = true\n',
            "('share_extremes' is a parameter of app 'stats': put it under [params])",
        ),
    ],
)
def test_errors_name_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(StudyError) as info:
        load_study(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_remote_data_paths_stay_as_given_when_not_transferred(tmp_path: Path) -> None:
    text = 'app = "stats"\nskip_data_transfer = true\n[[clients]]\nhostname = "h"\ndata = ["/srv/a.csv", "rel.csv"]\n[[clients]]\ndata = ["local.csv"]\n'
    study = load_study(write(tmp_path, text))
    assert study.clients[0].data == ["/srv/a.csv", "rel.csv"]
    assert study.clients[1].data == [str(tmp_path / "local.csv")]


def test_overrides_replace_top_level_keys(tmp_path: Path) -> None:
    study = load_study(write(tmp_path, 'app = "stats"\n'), seed=7, params={"columns": ["x"]})
    assert study.seed == 7 and study.params == {"columns": ["x"]}


def test_template_parses_as_a_study(tmp_path: Path) -> None:
    study = load_study(write(tmp_path, TEMPLATE))
    assert study.app == "logistic-regression" and len(study.clients) == 2


def test_sim_runs_every_client_as_a_local_site(tmp_path: Path) -> None:
    text = (
        'app = "stats"\nsim = true\n[[clients]]\nhostname = "h"\nusername = "u"\ndata = ["a.csv"]\n'
    )
    study = load_study(write(tmp_path, text))
    assert study.clients[0].is_local and study.clients[0].data == [str(tmp_path / "a.csv")]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("foo = 1", "unknown key 'foo'"),
        ("share_extreme = true", "did you mean 'share_extremes'?"),
        ('columns = "x"', "params.columns"),
    ],
)
def test_param_errors_name_the_study_file(tmp_path: Path, params: str, message: str) -> None:
    path = write(tmp_path, f'app = "stats"\n[params]\n{params}\n')
    with pytest.raises(AppError) as info:
        load_study(path)
    assert str(info.value).startswith(f"{path}: app 'stats': ")
    assert message in str(info.value)
    assert info.value.exit_code == 2


def test_plug_in_apps_that_cannot_load_are_left_to_the_run(tmp_path: Path) -> None:
    study = load_study(write(tmp_path, 'app = "nowhere.module:App"\n[params]\nx = 1\n'))
    assert study.params == {"x": 1}


def test_template_shows_the_reading_keys(tmp_path: Path) -> None:
    text = TEMPLATE.replace("# sep =", "sep =").replace("# header =", "header =")
    text = text.replace("# columns =", "columns =")
    study = load_study(write(tmp_path, text))
    assert study.clients[0].reading() == {
        "sep": ";",
        "header": False,
        "columns": ["age", "bmi", "outcome"],
    }
