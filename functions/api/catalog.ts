import { engineNames, plans } from '#core/catalog.ts';
import { hostVersions } from '#core/databases.ts';
import { apiHandler, json } from '#core/http.ts';

export const listEngines = apiHandler({ access: 'public' }, async ({ store }) => {
  const versions = await hostVersions(store, new Date());
  return json(200, {
    engines: engineNames.map((engine) => {
      const offered = versions.filter((v) => v.engine === engine);
      return { engine, defaultVersion: offered.find((v) => v.major === 17)?.version ?? offered[0]?.version, versions: offered };
    }),
  });
});

export const listPlans = apiHandler({ access: 'public' }, async () => json(200, { plans }));
