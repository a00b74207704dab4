-- GET /payments: a merchant's payments, newest first, a page at a time.
CREATE INDEX payments_merchant_listing_idx ON payments (merchant_id, created_at DESC, payment_id DESC);
