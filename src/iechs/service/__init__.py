"""The CDS Hooks 2.0 service (`iechs serve`): the engine behind an EHR's hooks.

- `GET /cds-services`: discovery of the two services below.
- `POST /cds-services/iechs-patient-view` (hook `patient-view`): the episode's state with the
  recommendations in force, the alerts raised in that state and what is due at the hook's time.
- `POST /cds-services/iechs-order-sign` (hook `order-sign`): the draft orders are stepped as
  treatments through a copy of the stored episode, and the alerts the engine raises for them
  (IL-6 blockade without a corticosteroid, immunosuppression before antimicrobials, tocilizumab
  with ICANS, a treatment the guideline does not sanction) come back as cards.
- `POST /cds-services/{id}/feedback`: what the clinician did with a card (accepted, or
  overridden and why) is appended to the audit log.
- `GET /review`: the guideline's review page, which every card links to.

Episodes live in the audit store (`--store PATH.db` or `postgresql://...`) and are read from it
on every request, so any number of service processes can answer for any patient; a process keeps
the episodes it restored and replays only what was recorded since. A client reads its tenant's
episodes only (`tenant_episode_id`). Time is the hook's (`extension["dev.iechs.now"]`) or the
episode's last event: nothing reads the clock while deciding. The modules: `core` (the services,
framework-free), `cards`, `orders`, `episodes` (restored episodes, kept), `clients` (who calls,
which episodes it reads), `issued` (the cards handed out, for feedback, and its limits),
`tokens` (the JWT ids used), `tables` (the service's tables in the store's database),
`security` (JWT, size limits), `schemas` (the request and response models), `app` (FastAPI,
CORS), `commands` (`iechs serve`).
"""

from .clients import tenant_episode_id

__all__ = ["tenant_episode_id"]
