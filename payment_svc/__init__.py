"""Payment service: owns customer accounts; charges for reserved orders (step 3)."""
