from infra.database import main

main()
