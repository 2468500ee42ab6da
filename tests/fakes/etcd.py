"""Real etcd processes for the tests (chaos/etcdproc.py starts them): one member or a 3-member cluster.

The session fixtures `etcd` (1 member) and `etcd_cluster` (3 members) are in tests/conftest.py. Tests
share them: each keeps to a key prefix of its own and leaves every member running as it found it."""

from chaos.etcdproc import EtcdCluster, EtcdDidNotStart, EtcdMember, etcd_cluster, healthy

__all__ = ["EtcdCluster", "EtcdDidNotStart", "EtcdMember", "etcd_cluster", "healthy"]
