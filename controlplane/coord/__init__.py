"""Replicas of the plane coordinated through etcd: client, leader election, vantage quorum."""
