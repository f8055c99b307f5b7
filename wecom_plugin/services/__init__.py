"""Use cases: orchestrate domain rules, the WeCom transport and persistence in one transaction."""
