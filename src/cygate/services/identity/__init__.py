"""Identity and access: accounts, tokens, external providers, GDPR rights (``docs/identity.md``)."""
