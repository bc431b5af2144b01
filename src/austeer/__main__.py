from austeer.cli import main

raise SystemExit(main())
