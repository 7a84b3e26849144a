"""The one S3 client factory (iclora_api.objectstore): endpoint parsing, credentials, policy. No network."""

from __future__ import annotations

import subprocess
import sys

import pytest

from iclora_api.contract import DATASET_CREDENTIALS_ENV_PREFIX
from iclora_api.objectstore import (
    DEFAULT_ENDPOINT,
    FAIL_FAST,
    TRANSFERS,
    Endpoint,
    StoreCredentials,
    make_client,
    parse_endpoint,
)


@pytest.mark.parametrize(
    ("url", "host", "secure"),
    [
        ("http://h:9000", "h:9000", False),
        ("https://h", "h", True),
        ("h:9000", "h:9000", True),  # a bare host[:port] talks TLS
        ("h", "h", True),
        ("http://h:9000/", "h:9000", False),  # trailing slash dropped
        ("https://h//", "h", True),
        ("  http://h:9000  ", "h:9000", False),
        ("HTTP://h:9000", "h:9000", False),
        ("http://127.0.0.1:8333", "127.0.0.1:8333", False),
        ("https://[::1]:9000", "[::1]:9000", True),
        (DEFAULT_ENDPOINT, "s3.amazonaws.com", True),
    ],
)
def test_parse_endpoint(url, host, secure):
    assert parse_endpoint(url) == Endpoint(host=host, secure=secure)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://h:9000/prefix", "path prefix"),
        ("https://h/a/b/", "path prefix"),
        ("http://h:9000?x=1", "path prefix"),
        ("http://h:9000#frag", "path prefix"),
        ("ftp://h", "scheme"),
        ("s3://bucket", "scheme"),
        ("", "empty"),
        ("   ", "empty"),
        ("http://", "no host"),
        ("http://:9000", "no host"),
        ("http://user:pw@h:9000", "credentials"),
        ("http://h:port", "Port"),
        ("http://h:70000", "ort"),
        ("http://h:", "empty port"),
    ],
)
def test_parse_endpoint_refuses(url, why):
    with pytest.raises(ValueError, match=why):
        parse_endpoint(url)


def test_endpoint_url_round_trips():
    for url in ("http://h:9000", "https://h", "https://[::1]:9000"):
        assert parse_endpoint(url).url == url
    assert parse_endpoint("h:9000").url == "https://h:9000"


def test_credentials_from_env_defaults():
    creds = StoreCredentials.from_env({})
    assert creds == StoreCredentials(endpoint=DEFAULT_ENDPOINT, access_key="", secret_key="", region=None)
    assert StoreCredentials.from_env({"AWS_ENDPOINT_URL": "", "AWS_REGION": ""}, region="eu-1") == StoreCredentials(
        region="eu-1"
    )


def test_credentials_from_env_reads_the_aws_variables():
    env = {"AWS_ENDPOINT_URL": "http://h:9000", "AWS_ACCESS_KEY_ID": "ak", "AWS_SECRET_ACCESS_KEY": "sk",
           "AWS_REGION": "eu-west-1"}
    assert StoreCredentials.from_env(env, region="us-east-1") == StoreCredentials("http://h:9000", "ak", "sk",
                                                                                   "eu-west-1")


def test_prefixed_credentials_are_a_whole_set_never_mixed_with_the_run_store():
    """A dataset or model Secret holding only keys talks to AWS: its keys never go to the run store."""
    env = {"AWS_ENDPOINT_URL": "http://store:9000", "AWS_ACCESS_KEY_ID": "run", "AWS_SECRET_ACCESS_KEY": "run-s",
           "AWS_REGION": "eu-west-3",
           f"{DATASET_CREDENTIALS_ENV_PREFIX}AWS_ACCESS_KEY_ID": "data",
           f"{DATASET_CREDENTIALS_ENV_PREFIX}AWS_SECRET_ACCESS_KEY": "data-s"}
    creds = StoreCredentials.from_env(env, prefix=DATASET_CREDENTIALS_ENV_PREFIX)
    assert (creds.endpoint, creds.access_key, creds.secret_key, creds.region) == (
        "https://s3.amazonaws.com", "data", "data-s", None)


def test_without_prefixed_variables_the_plain_set_applies():
    env = {"AWS_ENDPOINT_URL": "http://store:9000", "AWS_ACCESS_KEY_ID": "run", "AWS_SECRET_ACCESS_KEY": "run-s"}
    creds = StoreCredentials.from_env(env, prefix=DATASET_CREDENTIALS_ENV_PREFIX)
    assert (creds.endpoint, creds.access_key, creds.secret_key) == ("http://store:9000", "run", "run-s")


def test_secret_key_stays_out_of_repr():
    assert "hunter2" not in repr(StoreCredentials("http://h", "ak", "hunter2"))


def test_credentials_are_hashable_cache_keys():
    assert len({StoreCredentials("http://h", "a", "b"), StoreCredentials("http://h", "a", "b")}) == 1


@pytest.mark.parametrize(
    ("creds", "host", "https", "region"),
    [
        (StoreCredentials("http://h:9000/", "ak", "sk", "eu-west-1"), "h:9000", False, "eu-west-1"),
        (StoreCredentials("h:9000", "ak", "sk"), "h:9000", True, None),
        (StoreCredentials("https://s3.example.com", region=""), "s3.example.com", True, None),
    ],
)
def test_make_client(creds, host, https, region):
    client = make_client(creds)
    assert client._base_url.host == host
    assert client._base_url.is_https is https
    assert client._base_url.region == region


def test_make_client_applies_the_policy():
    for policy in (TRANSFERS, FAIL_FAST):
        pool = make_client(StoreCredentials("http://h:9000", "ak", "sk"), policy)._http.connection_pool_kw
        assert pool["timeout"].connect_timeout == policy.connect_timeout
        assert pool["timeout"].read_timeout == policy.read_timeout
        assert pool["maxsize"] == policy.pool_size
        assert pool["retries"].total == policy.retries
        assert set(pool["retries"].status_forcelist) == set(policy.retry_statuses)
        assert pool["cert_reqs"] == "CERT_REQUIRED"
    assert FAIL_FAST.read_timeout < TRANSFERS.read_timeout


def test_make_client_refuses_a_path_prefix():
    with pytest.raises(ValueError, match="path prefix"):
        make_client(StoreCredentials("http://h:9000/bucket"))


def test_operator_credentials_are_the_contract_ones():
    from iclora_operator.adapters.objectstore import Credentials

    assert Credentials is StoreCredentials


def test_contract_imports_no_minio():
    code = ("import sys, iclora_api.objectstore, iclora_api.contract; "
            "bad = {'minio', 'urllib3', 'certifi'} & set(sys.modules); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
