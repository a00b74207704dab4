-- The payment method token the payment is charged to (a provider token, never card data).
ALTER TABLE payments ADD COLUMN payment_method TEXT NOT NULL DEFAULT 'pm_card_ok';
ALTER TABLE payments ADD COLUMN failure_reason TEXT;
