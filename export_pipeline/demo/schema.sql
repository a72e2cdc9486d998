-- Demo source schema. `events` has the shape of shared/reference/events.sql (the benchmark table).
DROP TABLE IF EXISTS public.invoices, public.orders, public.events, public.customers;
DROP TYPE IF EXISTS public.order_status;
CREATE TYPE public.order_status AS ENUM ('placed', 'paid', 'shipped', 'cancelled');
CREATE TABLE public.customers (
  id int PRIMARY KEY,
  name text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE public.events (
  id bigserial PRIMARY KEY,
  customer_id int NOT NULL,
  occurred_at timestamptz NOT NULL,
  event_type text NOT NULL,
  amount numeric(12,2),
  payload jsonb,
  tags text[],
  session_id uuid,
  is_test boolean NOT NULL DEFAULT false
);
CREATE TABLE public.orders (
  id bigserial PRIMARY KEY,
  customer_id int NOT NULL,
  ordered_at timestamptz NOT NULL,
  order_number uuid NOT NULL,
  status public.order_status NOT NULL,
  total numeric(14,2) NOT NULL,
  currency char(3) NOT NULL,
  items jsonb NOT NULL,
  shipped_on date
);
CREATE TABLE public.invoices (
  id bigserial PRIMARY KEY,
  customer_id int NOT NULL,
  issued_on date NOT NULL,
  due_on date NOT NULL,
  amount numeric(12,2) NOT NULL,
  tax_rate numeric,
  paid boolean NOT NULL,
  notes text,
  line_items text[]
);
