// Asks for the access token when the aggregator requires one.

import { useState } from "react";

export function TokenPrompt({ message, onToken }: { message?: string; onToken: (t: string) => void }) {
  const [token, setToken] = useState("");
  return (
    <form
      className="token"
      data-testid="token-prompt"
      onSubmit={(e) => {
        e.preventDefault();
        if (token.trim()) onToken(token.trim());
      }}
    >
      <h2>This aggregator requires an access token</h2>
      {message && <p className="error">{message}</p>}
      <input
        type="password"
        name="token"
        autoComplete="off"
        placeholder="token"
        value={token}
        onChange={(e) => setToken(e.target.value)}
        autoFocus
      />
      <button type="submit">Connect</button>
      <p className="hint">Kept for this browser session only.</p>
    </form>
  );
}
