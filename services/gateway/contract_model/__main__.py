from services.gateway.contract_model import main

raise SystemExit(main())
