"""Privacy controls: the classification of personal data, log redaction, retention and consent
(``docs/privacy.md``)."""
