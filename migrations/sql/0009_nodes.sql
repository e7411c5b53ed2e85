-- The CA each node signs its instances' server certificates with, so that
-- any node can hand out the ca_certificate of an instance on another node
-- (each node keeps its own CA key in its data path).
ALTER TABLE nodes ADD COLUMN ca_certificate text NOT NULL DEFAULT '';
