from payment_provider.app import main

main()
