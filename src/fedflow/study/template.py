"""The commented study template written by ``fedflow template`` (and the original's ``fedflow -t``)."""

from __future__ import annotations

__all__ = ["TEMPLATE"]

TEMPLATE = """\
# fedflow study file. Run it with:  fedflow run study.toml [--compare]
# Relative paths resolve against this file's folder.

name = "my-study"                  # default: the file name without .toml
platform = "native"                # "native" (fedflow's own runtime) or "featurecloud"
app = "logistic-regression"        # see `fedflow apps`, or "package.module:Class"
seed = 42                          # passed to randomized apps
min_count = 5                      # a site never answers with an aggregate over fewer records
timeout = 300                      # seconds a site may take per round
dropna = false                     # true: drop rows with missing values in the needed columns
outdir = "results/"                # run directories go to <outdir>/<name>/<UTC time>/

[params]                           # checked by the app; see docs/apps/<app>.md
target = "outcome"
# features = ["age", "bmi"]        # default: every numeric column except the target
# intercept = true

# --- sites: one [[clients]] entry each --------------------------------------------------------
[[clients]]
name = "site-a"                    # default: site-1, site-2, ...
data = ["data/site-a.csv"]         # CSV, TSV or Parquet; several files are concatenated
# sep = ";"                        # field separator (default "," for .csv, tab for .tsv)
# header = false                   # the files have no header line: name the columns below
# columns = ["age", "bmi", "outcome"]

[[clients]]
name = "site-b"
data = ["data/site-b.csv"]
# A remote site, reached over SSH (fedflow prepares it and runs its node agent there):
# hostname = "fl.example.org"
# username = "fed"
# port = 22
# sshkey = "~/.ssh/id_ed25519"
# workdir = "~/.fedflow/my-study"  # the study's folder on the site

# --- keys of the original fedflow (FeatureCloud platform and remote machines) ----------------
# project_id = 0                   # use an existing FeatureCloud project ...
# tool = "mean-app"                # ... or create one with this FeatureCloud app
# sim = false
# provision_script = "provision.sh"  # run on every remote site before anything else
# skip_data_transfer = false       # true: `data` names paths that already exist on each site
# skip_credential_transfer = false
# skip_result_transfer = false     # true: leave the sites' outputs and logs at the sites
# [[clients]] also take: fc_username = "FC_USER", coordinator = true|false
#
# [debug]
# verbose = false                  # sites log at DEBUG level; errors show tracebacks
"""
