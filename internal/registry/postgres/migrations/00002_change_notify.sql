-- Every committed change to what an admit reads is announced on the
-- channel bap_engine_changes, so that each orchestrator process can drop
-- what it caches (see Store.WatchChanges). The payload is 'e:<engine id>'
-- or 'p:<product id>'. Columns that change on every probe or admit
-- (last_health_at, last_active_at, health_failures) are not announced.

-- +goose Up
-- +goose StatementBegin
CREATE FUNCTION bap_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    row_id uuid;
BEGIN
    IF TG_OP = 'DELETE' THEN
        row_id := OLD.id;
    ELSE
        row_id := NEW.id;
    END IF;
    PERFORM pg_notify('bap_engine_changes', TG_ARGV[0] || ':' || row_id::text);
    RETURN NULL;
END
$$;
-- +goose StatementEnd

CREATE TRIGGER engines_notify_update AFTER UPDATE ON engines FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
       OR OLD.port IS DISTINCT FROM NEW.port
       OR OLD.url IS DISTINCT FROM NEW.url
       OR OLD.image IS DISTINCT FROM NEW.image
       OR OLD.engine_key_hash IS DISTINCT FROM NEW.engine_key_hash
       OR OLD.engine_key_enc IS DISTINCT FROM NEW.engine_key_enc
       OR OLD.instance_id IS DISTINCT FROM NEW.instance_id
       OR OLD.product_id IS DISTINCT FROM NEW.product_id
       OR OLD.user_id IS DISTINCT FROM NEW.user_id)
    EXECUTE FUNCTION bap_notify_change('e');
CREATE TRIGGER engines_notify_delete AFTER DELETE ON engines FOR EACH ROW
    EXECUTE FUNCTION bap_notify_change('e');
CREATE TRIGGER products_notify AFTER UPDATE OR DELETE ON products FOR EACH ROW
    EXECUTE FUNCTION bap_notify_change('p');

-- +goose Down
DROP TRIGGER products_notify ON products;
DROP TRIGGER engines_notify_delete ON engines;
DROP TRIGGER engines_notify_update ON engines;
DROP FUNCTION bap_notify_change();
