-- The record keeps what was written: no row is deleted, and a row changes once, from
-- 'started' to how the action ended.
CREATE FUNCTION operator_actions_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.outcome = 'started' AND NOT OLD.succeeded
       AND (NEW.operator, NEW.action, NEW.target, NEW.reason, NEW.at)
           = (OLD.operator, OLD.action, OLD.target, OLD.reason, OLD.at) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'operator_actions is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER operator_actions_append_only BEFORE UPDATE OR DELETE ON operator_actions
    FOR EACH ROW EXECUTE FUNCTION operator_actions_append_only();
CREATE TRIGGER operator_actions_no_truncate BEFORE TRUNCATE ON operator_actions
    FOR EACH STATEMENT EXECUTE FUNCTION operator_actions_append_only();
CREATE INDEX operator_actions_target ON operator_actions (target, action_id DESC);
