"""What the tests share: the in-process server, the raw client, attackers, child processes and waits."""
