-- Search service (issue 16): "a colour near #rrggbb" filters on the distance from the colour to
-- the nearest entry of the image's palette (Euclidean in RGB, 0 .. 441.7). A function so the
-- API sends one parameterised predicate; malformed palette entries are ignored, never an error.
CREATE OR REPLACE FUNCTION palette_distance(palette jsonb, r integer, g integer, b integer)
RETURNS double precision LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT min(sqrt(power(('x' || substr(e->>'hex', 2, 2))::bit(8)::integer - r, 2)
                  + power(('x' || substr(e->>'hex', 4, 2))::bit(8)::integer - g, 2)
                  + power(('x' || substr(e->>'hex', 6, 2))::bit(8)::integer - b, 2)))
    FROM jsonb_array_elements(CASE WHEN jsonb_typeof(palette) = 'array' THEN palette ELSE '[]'::jsonb END) AS e
    WHERE jsonb_typeof(e) = 'object' AND e->>'hex' ~ '^#[0-9a-fA-F]{6}$'
$$;
